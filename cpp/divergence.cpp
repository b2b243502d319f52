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

ContextHandle open_context(const Model & model, int n_ctx, int n_threads) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = cp.n_ubatch = kChunk;
    cp.n_threads = cp.n_threads_batch = resolve_threads(n_threads, "divergence");
    // evaluate()'s numerics (F32 K/V, no flash attention), so reference_nll matches the validation loss
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    ContextHandle ctx(llama_init_from_model(model.get(), cp));
    if (!ctx) {
        throw Error("could not create an evaluation context for " + model.path() + ": " + last_log_error());
    }
    return ctx;
}

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

void decode_chunk(llama_context * ctx, const std::vector<int32_t> & seq, const std::vector<uint8_t> & mask,
                  size_t start, size_t end) {
    Batch batch(kChunk);
    for (size_t i = start; i < end; ++i) {
        batch.add(seq[i], (int) i, 0, mask[i] != 0);
    }
    if (llama_decode(ctx, batch.b) != 0) {
        throw Error("divergence: decode failed: " + last_log_error());
    }
}

} // namespace

std::vector<Divergence> divergence(const Model & reference, const std::vector<const Model *> & candidates,
                                   const std::vector<std::vector<int32_t>> & sequences,
                                   const std::vector<std::vector<uint8_t>> & masks, int n_threads) {
    if (sequences.size() != masks.size()) {
        throw Error("divergence: one mask per sequence is needed");
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(reference.get()));
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
    const int n_ctx = (int) ((longest + 255) / 256 * 256);
    ContextHandle ref = open_context(reference, n_ctx, n_threads);
    std::vector<ContextHandle> cands;
    for (const Model * c : candidates) {
        cands.push_back(open_context(*c, n_ctx, n_threads));
    }
    std::vector<Sums> sums(candidates.size());
    std::vector<float> ref_lp, cand_lp;
    for (size_t s = 0; s < sequences.size(); ++s) {
        const auto & seq = sequences[s];
        const auto & mask = masks[s];
        llama_memory_clear(llama_get_memory(ref.get()), true);
        for (auto & c : cands) {
            llama_memory_clear(llama_get_memory(c.get()), true);
        }
        for (size_t start = 0; start < seq.size(); start += kChunk) {
            const size_t end = std::min(seq.size(), start + kChunk);
            decode_chunk(ref.get(), seq, mask, start, end);
            for (auto & c : cands) {
                decode_chunk(c.get(), seq, mask, start, end);
            }
            for (size_t i = start; i < end; ++i) {
                if (!mask[i]) {
                    continue;
                }
                const int ref_top = log_softmax(llama_get_logits_ith(ref.get(), (int32_t) (i - start)), n_vocab, ref_lp);
                const bool tool = mask[i] == 2;
                const int32_t actual = i + 1 < seq.size() ? seq[i + 1] : -1;
                for (size_t c = 0; c < cands.size(); ++c) {
                    const int top = log_softmax(llama_get_logits_ith(cands[c].get(), (int32_t) (i - start)), n_vocab, cand_lp);
                    double kl = 0, ref_h = 0, cand_h = 0;
                    for (int t = 0; t < n_vocab; ++t) {
                        const double p = std::exp((double) ref_lp[t]);
                        kl += p * (ref_lp[t] - cand_lp[t]);
                        ref_h -= p * ref_lp[t];
                        cand_h -= std::exp((double) cand_lp[t]) * cand_lp[t];
                    }
                    kl = std::max(0.0, kl);   // >= 0 exactly; rounding can leave -1e-17
                    Sums & m = sums[c];
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
            }
        }
    }
    std::vector<Divergence> result(candidates.size());
    for (size_t c = 0; c < candidates.size(); ++c) {
        const Sums & m = sums[c];
        Divergence & d = result[c];
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
    }
    return result;
}

} // namespace dnd
