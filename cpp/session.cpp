// A model's reusable inference context. generate() keeps the KV cache between calls and decodes
// only what changed (a chat's earlier turns are not decoded again). replay() generates many turns
// of many conversations: each conversation's prefix is decoded once, incrementally; at each job
// (a DM turn) its KV sequence is forked (llama_memory_seq_cp shares the cells, it copies no data),
// the turn is generated in the fork, and up to n_parallel forks advance together, one token each
// per decode call, so a memory-bound CPU reads the weights once for n_parallel tokens.
#include "native.h"

#include "llama.h"

#include <algorithm>
#include <chrono>
#include <map>

namespace dnd {

namespace {

using Clock = std::chrono::steady_clock;

// the main sequences of conversations being fed, beside the forks
constexpr int kMainSequences = 2;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void check_fits(size_t n_prompt, int max_tokens, int n_ctx, const std::string & what) {
    if (n_prompt == 0) {
        throw Error(what + ": empty prompt\nfix: pass at least one token (BOS)");
    }
    if ((int) n_prompt + max_tokens > n_ctx) {
        throw Error(what + ": prompt (" + std::to_string(n_prompt) + " tokens) plus max_tokens (" +
                    std::to_string(max_tokens) + ") exceeds the context of " + std::to_string(n_ctx) +
                    "\nfix: raise n_ctx or shorten the conversation");
    }
}

} // namespace

Session & Model::session(const SessionOptions & opts) const {
    // a bigger context serves a smaller request: no new context when a chat follows a replay
    const bool fits = session_ && session_->options().n_ctx >= opts.n_ctx &&
                      session_->options().n_parallel >= opts.n_parallel &&
                      session_->options().n_threads == opts.n_threads && session_->options().n_batch == opts.n_batch;
    if (!fits) {
        session_.reset();
        session_ = std::make_unique<Session>(*this, opts);
    }
    return *session_;
}

int Model::cached_tokens() const { return session_ ? session_->n_cached() : 0; }

Session::Session(const Model & model, const SessionOptions & opts) : model_(model), opts_(opts) {
    if (opts.n_ctx < 1 || opts.n_parallel < 1 || opts.n_parallel > 200 || opts.n_batch < 1) {
        throw Error("inference session: n_ctx and n_batch must be positive and n_parallel 1..200\n"
                    "fix: pass sensible session settings");
    }
    if (model.vocab_only()) {   // llama.cpp aborts on a context over no weights
        throw Error("cannot generate with " + model.path() + ": it was loaded vocab_only (tokenizer only)\n"
                    "fix: load the model without vocab_only");
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = opts.n_ctx;
    cp.n_batch = cp.n_ubatch = opts.n_batch;
    cp.n_seq_max = opts.n_parallel + kMainSequences;
    cp.kv_unified = true;   // forks share their prefix's cells; separate streams would copy them
    threads_ = resolve_threads(opts.n_threads, "generate");
    cp.n_threads = cp.n_threads_batch = threads_;
    last_log_error();
    ctx_.reset(llama_init_from_model(model.get(), cp));
    if (!ctx_) {
        throw Error("could not create an inference context for " + model.path() + ": " + last_log_error() +
                    "\nfix: load the model without vocab_only, or lower n_ctx");
    }
}

size_t common_prefix(const std::vector<int32_t> & a, const std::vector<int32_t> & b) {
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) {
        ++n;
    }
    return n;
}

void Session::clear() {
    llama_memory_clear(llama_get_memory(ctx_.get()), true);
    cached_.clear();
}

void Session::set_threads(int n_threads) {
    const int n = resolve_threads(n_threads > 0 ? n_threads : opts_.n_threads, "generate");
    if (n != threads_) {
        llama_set_n_threads(ctx_.get(), n, n);
        threads_ = n;
    }
}

void Session::decode(const llama_batch & batch, const char * what) {
    const int rc = llama_decode(ctx_.get(), batch);
    if (rc == 1) {
        throw Error(std::string(what) + ": no room left in the KV cache (" + std::to_string(llama_n_ctx(ctx_.get())) +
                    " cells)\nfix: raise the session's n_ctx or lower n_parallel");
    }
    if (rc != 0) {
        throw Error(std::string(what) + " failed: " + last_log_error());
    }
}

size_t Session::feed(const std::vector<int32_t> & prompt) {
    llama_memory_t mem = llama_get_memory(ctx_.get());
    // keep what is cached up to the first difference; the last prompt token is decoded again for its logits
    const size_t keep = std::min(common_prefix(cached_, prompt), prompt.size() - 1);
    if (!llama_memory_seq_rm(mem, 0, (llama_pos) keep, -1)) {
        clear();
    }
    cached_.resize(std::min(keep, cached_.size()));
    Batch batch(opts_.n_batch, 1);
    for (size_t i = cached_.size(); i < prompt.size();) {
        batch.clear();
        for (; i < prompt.size() && batch.b.n_tokens < opts_.n_batch; ++i) {
            batch.add(prompt[i], (int) i, 0, i + 1 == prompt.size());
        }
        decode(batch.b, "prompt evaluation");
    }
    const size_t fed = prompt.size() - cached_.size();
    cached_ = prompt;
    return prompt.size() - fed;
}

std::vector<float> Session::next_logits(const std::vector<int32_t> & tokens) {
    check_fits(tokens.size(), 0, llama_n_ctx(ctx_.get()), "next_logits");
    try {
        feed(tokens);
    } catch (...) {
        clear();
        throw;
    }
    const float * logits = llama_get_logits_ith(ctx_.get(), -1);
    return std::vector<float>(logits, logits + llama_vocab_n_tokens(llama_model_get_vocab(model_.get())));
}

GenerateResult Session::generate(const std::vector<int32_t> & prompt, const GenerateOptions & opts) {
    check_fits(prompt.size(), opts.max_tokens, std::min<int>(opts.n_ctx, llama_n_ctx(ctx_.get())), "generate");
    set_threads(opts.n_threads);
    const llama_vocab * vocab = llama_model_get_vocab(model_.get());
    SamplerHandle sampler = new_sampler(vocab, opts);
    GenerateResult res;
    res.n_prompt = (int) prompt.size();
    try {
        Batch batch(opts_.n_batch, 1);
        const auto t0 = Clock::now();
        const size_t keep = feed(prompt);
        const double prompt_s = since(t0);
        const auto t1 = Clock::now();
        res.stop_reason = "length";
        for (int i = 0; i < opts.max_tokens; ++i) {
            const int32_t tok = sample_token(sampler.get(), ctx_.get(), -1);
            if (!take_token(res, vocab, tok, opts)) {
                break;
            }
            if (res.n_generated >= opts.max_tokens) {
                break;   // no decode for a token nothing will follow
            }
            batch.clear();
            batch.add(tok, (int) cached_.size(), 0, true);
            decode(batch.b, "generation");
            cached_.push_back(tok);
        }
        res.prompt_tokens_per_s = (prompt.size() - keep) / std::max(1e-9, prompt_s);
        res.gen_tokens_per_s = res.n_generated / std::max(1e-9, since(t1));
    } catch (...) {
        clear();   // a half-decoded batch leaves the cache unknown: start over next time
        throw;
    }
    return res;
}

} // namespace dnd
