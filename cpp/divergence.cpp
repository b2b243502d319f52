// How far quantized copies drift from the model they were made from, teacher-forced: every model
// reads the same token sequences, and at each scored position the candidates' next-token
// distributions are compared with the reference's (KL divergence, top-1 agreement), as llama.cpp's
// perplexity tool does with --kl-divergence. One pass per model; no generation.
#include "native.h"

#include "llama.h"

#include <algorithm>
#include <cmath>

namespace dnd {

namespace {

constexpr int kChunk = 128;   // positions per decode: bounds the logits buffer (chunk x n_vocab floats)

// log-probabilities of one logits row (into `out`) and the row's argmax
int log_softmax(const float * logits, int n, std::vector<float> & out) {
    const int best = (int) (std::max_element(logits, logits + n) - logits);
    const float max = logits[best];
    double sum = 0;
    for (int t = 0; t < n; ++t) {
        sum += std::exp((double) (logits[t] - max));
    }
    const float log_z = max + (float) std::log(sum);
    out.resize(n);
    for (int t = 0; t < n; ++t) {
        out[t] = logits[t] - log_z;
    }
    return best;
}

struct Sums {
    double kl = 0, max_kl = 0, tool_kl = 0, ref_nll = 0, cand_nll = 0, ref_h = 0, cand_h = 0;
    int64_t n = 0, agree = 0, tool_n = 0, tool_agree = 0;
};

// Throws unless every sequence has a mask of its length and tokens inside the reference's
// vocabulary, and every candidate has that vocabulary. Returns the longest sequence's length.
size_t check_inputs(const Model & reference, const std::vector<const Model *> & candidates,
                    const std::vector<std::vector<int32_t>> & sequences,
                    const std::vector<std::vector<uint8_t>> & masks, int n_vocab) {
    if (sequences.size() != masks.size()) {
        throw Error("divergence: one mask per sequence is needed");
    }
    size_t longest = 1;
    for (size_t s = 0; s < sequences.size(); ++s) {
        if (masks[s].size() != sequences[s].size()) {
            throw Error("divergence: sequence " + std::to_string(s) + " and its mask differ in length");
        }
        for (int32_t t : sequences[s]) {
            if (t < 0 || t >= n_vocab) {
                throw Error("divergence: token " + std::to_string(t) + " is outside the vocabulary of " +
                            reference.path() + "\nfix: tokenize with the reference model");
            }
        }
        longest = std::max(longest, sequences[s].size());
    }
    for (const Model * c : candidates) {
        if (llama_vocab_n_tokens(llama_model_get_vocab(c->get())) != n_vocab) {
            throw Error("divergence: " + c->path() + " has another vocabulary than " + reference.path());
        }
    }
    return longest;
}

// One scored position of one candidate: `ref_lp` and `cand_lp` are the two next-token
// log-distributions, `actual` the next token (-1 at a sequence's end), `tool` whether it is inside
// a tool call.
void add_position(Sums & m, const std::vector<float> & ref_lp, int ref_top, const std::vector<float> & cand_lp,
                  int top, int32_t actual, bool tool) {
    double kl = 0, ref_h = 0, cand_h = 0;
    for (size_t t = 0; t < ref_lp.size(); ++t) {
        const double p = std::exp((double) ref_lp[t]);
        kl += p * (ref_lp[t] - cand_lp[t]);
        ref_h -= p * ref_lp[t];
        cand_h -= std::exp((double) cand_lp[t]) * cand_lp[t];
    }
    kl = std::max(0.0, kl);   // >= 0 exactly; rounding can leave -1e-17
    m.n += 1;
    m.kl += kl;
    m.max_kl = std::max(m.max_kl, kl);
    m.agree += top == ref_top;
    m.ref_h += ref_h;
    m.cand_h += cand_h;
    if (actual >= 0) {
        m.ref_nll -= ref_lp[actual];
        m.cand_nll -= cand_lp[actual];
    }
    if (tool) {
        m.tool_n += 1;
        m.tool_kl += kl;
        m.tool_agree += top == ref_top;
    }
}

// Decodes seq[start, end) in every context (the reference first) and adds its scored positions.
void score_chunk(const std::vector<ContextHandle> & contexts, const std::vector<int32_t> & seq,
                 const std::vector<uint8_t> & mask, size_t start, size_t end, int n_vocab, std::vector<Sums> & sums) {
    std::vector<float> ref_lp, cand_lp;
    const auto scored = [&](int i) { return mask[start + i] != 0; };
    for (const auto & ctx : contexts) {
        decode_tokens(ctx.get(), seq.data() + start, (int) (end - start), (int) start, scored, "divergence");
    }
    for (size_t i = start; i < end; ++i) {
        if (!mask[i]) {
            continue;
        }
        const int32_t row = (int32_t) (i - start);
        const int ref_top = log_softmax(llama_get_logits_ith(contexts[0].get(), row), n_vocab, ref_lp);
        const int32_t actual = i + 1 < seq.size() ? seq[i + 1] : -1;
        for (size_t c = 1; c < contexts.size(); ++c) {
            const int top = log_softmax(llama_get_logits_ith(contexts[c].get(), row), n_vocab, cand_lp);
            add_position(sums[c - 1], ref_lp, ref_top, cand_lp, top, actual, mask[i] == 2);
        }
    }
}

Divergence summarize(const Sums & m) {
    Divergence d;
    d.positions = m.n;
    d.tool_positions = m.tool_n;
    if (m.n) {
        d.mean_kl = m.kl / m.n;
        d.max_kl = m.max_kl;
        d.top1_agreement = (double) m.agree / m.n;
        d.reference_nll = m.ref_nll / m.n;
        d.candidate_nll = m.cand_nll / m.n;
        d.reference_entropy = m.ref_h / m.n;
        d.candidate_entropy = m.cand_h / m.n;
    }
    if (m.tool_n) {
        d.tool_mean_kl = m.tool_kl / m.tool_n;
        d.tool_top1_agreement = (double) m.tool_agree / m.tool_n;
    }
    return d;
}

} // namespace

std::vector<Divergence> divergence(const Model & reference, const std::vector<const Model *> & candidates,
                                   const std::vector<std::vector<int32_t>> & sequences,
                                   const std::vector<std::vector<uint8_t>> & masks, int n_threads) {
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(reference.get()));
    const size_t longest = check_inputs(reference, candidates, sequences, masks, n_vocab);
    const int n_ctx = (int) ((longest + 255) / 256 * 256);
    // evaluate()'s numerics (training's), so reference_nll matches the validation loss
    std::vector<ContextHandle> contexts;
    contexts.push_back(open_scoring_context(reference, n_ctx, kChunk, n_threads, true, "", "divergence"));
    for (const Model * c : candidates) {
        contexts.push_back(open_scoring_context(*c, n_ctx, kChunk, n_threads, true, "", "divergence"));
    }
    std::vector<Sums> sums(candidates.size());
    for (size_t s = 0; s < sequences.size(); ++s) {
        for (const auto & ctx : contexts) {
            llama_memory_clear(llama_get_memory(ctx.get()), true);
        }
        for (size_t start = 0; start < sequences[s].size(); start += kChunk) {
            const size_t end = std::min(sequences[s].size(), start + kChunk);
            score_chunk(contexts, sequences[s], masks[s], start, end, n_vocab, sums);
        }
    }
    std::vector<Divergence> result;
    for (const Sums & m : sums) {
        result.push_back(summarize(m));
    }
    return result;
}

} // namespace dnd
