// Text generation with llama.cpp's sampler chain: the sampler and stop rules every path shares,
// and generate(), a fresh context per call (the one-at-a-time reference the Session is checked against).
#include "native.h"

#include "ggml.h"
#include "llama.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <string_view>

namespace dnd {

namespace {

using Clock = std::chrono::steady_clock;

} // namespace

SamplerHandle new_sampler(const llama_vocab * vocab, const GenerateOptions & o) {
    SamplerHandle chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    if (!o.grammar.empty()) {
        // grammar first: it masks the candidates the rest of the chain then picks from
        llama_sampler * grammar = llama_sampler_init_grammar(vocab, o.grammar.c_str(), "root");
        if (!grammar) {
            throw Error("the grammar does not parse: " + last_log_error() +
                        "\nfix: pass GBNF with a `root` rule (llama.cpp grammars/README.md)");
        }
        llama_sampler_chain_add(chain.get(), grammar);
    }
    if (o.temperature <= 0) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
        return chain;
    }
    llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(o.top_k));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(o.top_p, 1));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(o.temperature));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(o.seed));
    return chain;
}

namespace {

// The chain's grammar (new_sampler puts it first), or null.
llama_sampler * grammar_of(llama_sampler * chain) {
    if (llama_sampler_chain_n(chain) < 2) {
        return nullptr;
    }
    llama_sampler * first = llama_sampler_chain_get(chain, 0);
    return std::string(llama_sampler_name(first)) == "grammar" ? first : nullptr;
}

void fill_candidates(std::vector<llama_token_data> & cur, const float * logits, int n_vocab) {
    cur.resize(n_vocab);
    for (int t = 0; t < n_vocab; ++t) {
        cur[t] = llama_token_data{t, logits[t], 0.0f};
    }
}

// The token the chain picks without its grammar, when the grammar allows it; else -1. Checking one
// token is ~n_vocab times cheaper than masking the whole vocabulary (262k for Gemma) and gives the
// same token for greedy decoding: the unconstrained argmax, when allowed, is the constrained one too.
// (With sampling it is rejection sampling, as llama.cpp's common_sampler does.)
int32_t sample_unconstrained_if_allowed(llama_sampler * chain, llama_sampler * grammar,
                                        std::vector<llama_token_data> & cur) {
    llama_token_data_array arr{cur.data(), cur.size(), -1, false};
    for (int i = 1; i < llama_sampler_chain_n(chain); ++i) {
        llama_sampler_apply(llama_sampler_chain_get(chain, i), &arr);
    }
    if (arr.selected < 0 || arr.selected >= (int64_t) arr.size) {
        return -1;
    }
    llama_token_data one = arr.data[arr.selected];
    llama_token_data_array single{&one, 1, 0, false};
    llama_sampler_apply(grammar, &single);
    return std::isinf(one.logit) ? -1 : one.id;
}

} // namespace

int32_t sample_token(llama_sampler * chain, llama_context * ctx, int idx) {
    // llama_sampler_sample's steps, with a check between apply and accept: accepting a token the
    // grammar rules out aborts the process inside llama.cpp
    thread_local std::vector<llama_token_data> cur;
    const float * logits = llama_get_logits_ith(ctx, idx);
    if (!logits) {
        throw Error("no logits at batch position " + std::to_string(idx) + ": " + last_log_error());
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
    fill_candidates(cur, logits, n_vocab);
    llama_sampler * grammar = grammar_of(chain);
    llama_token tok = grammar ? sample_unconstrained_if_allowed(chain, grammar, cur) : -1;
    if (tok < 0) {
        if (grammar) {
            fill_candidates(cur, logits, n_vocab);   // the first try reordered and rescaled them
        }
        llama_token_data_array arr{cur.data(), cur.size(), -1, false};
        llama_sampler_apply(chain, &arr);
        if (arr.selected < 0 || arr.selected >= (int64_t) arr.size || std::isinf(arr.data[arr.selected].logit)) {
            return -1;   // every token ruled out: the grammar has no way on
        }
        tok = arr.data[arr.selected].id;
    }
    try {
        llama_sampler_accept(chain, tok);
    } catch (const std::exception & e) {
        throw Error(std::string("the grammar rejected the sampled token: ") + e.what());
    }
    return tok;
}

size_t find_stop(const std::string & text, const std::vector<std::string> & stops) {
    size_t best = std::string::npos;
    for (const auto & s : stops) {
        if (!s.empty()) {
            best = std::min(best, text.find(s));
        }
    }
    return best;
}

namespace {

constexpr size_t kMinSentence = 8;   // replay.MIN_SENTENCE

bool ends_prose(char c) { return c == '.' || c == '!' || c == '?' || c == '\n'; }

// code points, as Python's len() counts them
size_t code_points(std::string_view s) {
    return (size_t) std::count_if(s.begin(), s.end(), [](char c) { return ((unsigned char) c & 0xC0) != 0x80; });
}

std::string_view strip_ascii_space(std::string_view s) {
    const char * space = " \t\n\r\f\v";
    const size_t first = s.find_first_not_of(space);
    if (first == std::string_view::npos) {
        return {};
    }
    return s.substr(first, s.find_last_not_of(space) + 1 - first);
}

} // namespace

// The matches of LOOP_SPAN (\[[^\[\]]*\]|[^.!?\n\[\]]+[.!?\n]) as re.finditer finds them, left to right.
bool repeats_a_span(const std::string & text, int limit) {
    const std::string_view all(text);
    std::map<std::string_view, int> seen;
    size_t i = 0;
    while (i < all.size()) {
        size_t end = std::string_view::npos;   // one past the span starting at i, if one does
        if (all[i] == '[') {
            const size_t j = all.find_first_of("[]", i + 1);
            if (j != std::string_view::npos && all[j] == ']') {
                end = j + 1;
            }
        } else if (!ends_prose(all[i]) && all[i] != ']') {
            const size_t k = all.find_first_of(".!?\n[]", i);
            if (k != std::string_view::npos && ends_prose(all[k])) {
                end = k + 1;
            } else {
                i = k == std::string_view::npos ? all.size() : k;   // no span starts before k either
                continue;
            }
        }
        if (end == std::string_view::npos) {
            ++i;
            continue;
        }
        const std::string_view span = strip_ascii_space(all.substr(i, end - i));
        if (!span.empty() && (span.front() == '[' || code_points(span) >= kMinSentence) && ++seen[span] > limit) {
            return true;
        }
        i = end;
    }
    return false;
}

bool take_token(GenerateResult & res, const llama_vocab * vocab, int32_t tok, const GenerateOptions & opts) {
    if (tok < 0 || llama_vocab_is_eog(vocab, tok)) {
        res.stop_reason = tok < 0 ? "grammar" : "eos";
        return false;
    }
    res.n_generated += 1;
    res.tokens.push_back(tok);
    char piece[256];
    const int n = llama_token_to_piece(vocab, tok, piece, (int32_t) sizeof(piece), 0, false);
    res.text.append(piece, std::max(n, 0));
    const size_t stop = find_stop(res.text, opts.stop);
    if (stop != std::string::npos) {
        res.text.resize(stop);
        res.stop_reason = "stop";
        return false;
    }
    // a looping reply is cut before the looped copy afterwards: the tokens after it would be thrown away;
    // only a piece with a span's last character can complete one
    const std::string_view added(piece, (size_t) std::max(n, 0));
    const bool ends_a_span = added.find_first_of(".!?\n]") != std::string_view::npos;
    if (opts.max_repeats > 0 && ends_a_span && repeats_a_span(res.text, opts.max_repeats)) {
        res.stop_reason = "loop";
        return false;
    }
    return true;
}

// Sampling settings llama.cpp's samplers do not check themselves (a NaN temperature samples garbage,
// max_tokens 0 or a context of 0 tokens fail deep inside the context).
void check_generate_options(const GenerateOptions & o) {
    auto bad = [](const std::string & what, const std::string & fix) {
        throw Error(what + "\nfix: " + fix);
    };
    if (o.max_tokens < 1) {
        bad("max_tokens " + std::to_string(o.max_tokens) + " is below 1", "generate at least one token");
    }
    if (o.n_ctx < 1) {
        bad("n_ctx " + std::to_string(o.n_ctx) + " is below 1", "pass a context of at least the prompt plus max_tokens");
    }
    if (!std::isfinite(o.temperature) || o.temperature < 0) {
        bad("temperature " + std::to_string(o.temperature) + " is not a finite number >= 0", "0 (greedy) or above");
    }
    if (!std::isfinite(o.top_p) || o.top_p < 0 || o.top_p > 1) {
        bad("top_p " + std::to_string(o.top_p) + " is not in [0, 1]", "pass top_p in [0, 1]");
    }
    if (o.top_k < 0) {
        bad("top_k " + std::to_string(o.top_k) + " is negative", "0 (off) or above");
    }
    if (o.max_repeats < 0) {
        bad("max_repeats " + std::to_string(o.max_repeats) + " is negative", "0 (off) or above");
    }
    if (o.n_threads < 0 || o.n_threads > GGML_MAX_N_THREADS) {
        bad("generate: " + std::to_string(o.n_threads) + " threads is out of range",
            "pass 0 (the free cores) up to " + std::to_string(GGML_MAX_N_THREADS));
    }
}


GenerateResult generate(const Model & model, const std::string & prompt, const GenerateOptions & opts) {
    check_generate_options(opts);
    const llama_vocab * vocab = llama_model_get_vocab(model.get());
    if (model.vocab_only()) {   // llama.cpp aborts on a context over no weights
        throw Error("cannot generate with " + model.path() + ": it was loaded vocab_only (tokenizer only)\n"
                    "fix: load the model without vocab_only");
    }
    std::vector<int32_t> tokens = model.tokenize(prompt, true, true);
    if ((int) tokens.size() + opts.max_tokens > opts.n_ctx) {
        throw Error("prompt (" + std::to_string(tokens.size()) + " tokens) plus max_tokens (" +
                    std::to_string(opts.max_tokens) + ") exceeds the context of " + std::to_string(opts.n_ctx) +
                    "\nfix: raise n_ctx or shorten the conversation");
    }

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = opts.n_ctx;
    cp.n_batch = std::max<int>(512, tokens.size());
    cp.n_threads = cp.n_threads_batch = resolve_threads(opts.n_threads, "generate");
    ContextHandle ctx(llama_init_from_model(model.get(), cp));
    if (!ctx) {
        throw Error("could not create an inference context: " + last_log_error());
    }
    SamplerHandle sampler = new_sampler(vocab, opts);

    GenerateResult res;
    res.n_prompt = (int) tokens.size();
    const auto t0 = Clock::now();
    llama_batch batch = llama_batch_get_one(tokens.data(), (int32_t) tokens.size());
    if (llama_decode(ctx.get(), batch) != 0) {
        throw Error("prompt evaluation failed: " + last_log_error());
    }
    const auto t1 = Clock::now();

    res.stop_reason = "length";
    for (int i = 0; i < opts.max_tokens; ++i) {
        llama_token tok = sample_token(sampler.get(), ctx.get(), -1);
        if (!take_token(res, vocab, tok, opts)) {
            break;
        }
        batch = llama_batch_get_one(&tok, 1);
        if (llama_decode(ctx.get(), batch) != 0) {
            throw Error("generation failed: " + last_log_error());
        }
    }
    const auto t2 = Clock::now();
    const double prompt_s = std::chrono::duration<double>(t1 - t0).count();
    const double gen_s = std::chrono::duration<double>(t2 - t1).count();
    res.prompt_tokens_per_s = res.n_prompt / std::max(1e-9, prompt_s);
    res.gen_tokens_per_s = res.n_generated / std::max(1e-9, gen_s);
    return res;
}

} // namespace dnd
