// Evaluation without training: a model (optionally with a LoRA adapter) decodes windows with plain
// llama_decode; `evaluate` scores them (cross-entropy on the host), `logits` returns the raw rows.
#include "native.h"

#include "handles.h"
#include "llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace dnd {

namespace {

// A context over `model` with `adapter_file` applied when it is not empty.
ContextHandle open_context(llama_model * model, const llama_context_params & cp, const std::string & adapter_file) {
    ContextHandle ctx(llama_init_from_model(model, cp));
    if (!ctx) {
        throw Error("could not create a context (n_ctx=" + std::to_string(cp.n_ctx) + "): " + last_log_error());
    }
    if (!adapter_file.empty()) {
        load_adapter(model, adapter_file, ctx.get());
    }
    return ctx;
}

// Decodes tokens[0..n) as positions 0..n-1 of sequence 0; logits only where want_logits(i).
template <typename WantLogits>
void decode(llama_context * ctx, Batch & batch, const int32_t * tokens, int n, WantLogits want_logits) {
    llama_batch & b = batch.get();
    b.n_tokens = n;
    for (int i = 0; i < n; ++i) {
        b.token[i] = tokens[i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = want_logits(i);
    }
    if (llama_decode(ctx, b) != 0) {
        throw Error("decode failed: " + last_log_error());
    }
}

struct Score {
    double nll = 0;
    int64_t correct = 0, labelled = 0;
};

// Cross-entropy and argmax accuracy of one decoded window's labelled positions.
void score_window(llama_context * ctx, const int32_t * labels, int n_ctx, int n_vocab, Score & score) {
    for (int i = 0; i < n_ctx; ++i) {
        const int32_t label = labels[i];
        if (label < 0) {
            continue;
        }
        const float * logits = llama_get_logits_ith(ctx, i);
        const float mx = *std::max_element(logits, logits + n_vocab);
        double sum = 0;
        for (int v = 0; v < n_vocab; ++v) {
            sum += std::exp(double(logits[v]) - mx);
        }
        score.nll += std::log(sum) + mx - logits[label];
        score.correct += (std::max_element(logits, logits + n_vocab) - logits) == label;
        score.labelled += 1;
    }
}

} // namespace

std::pair<double, double> evaluate(const std::string & model_path, const Windows & windows,
                                   int n_ctx, int n_threads, int n_gpu_layers, const std::string & adapter_file) {
    Model model(model_path, n_gpu_layers, false);
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model.get()));
    check_windows(windows, n_ctx, n_vocab, "evaluation set");

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx;
    cp.n_threads = cp.n_threads_batch = n_threads > 0 ? n_threads : default_threads();
    // the numerics of training (F32 K/V, no flash attention): losses then agree with train()'s to
    // float rounding, and finite differences of this loss can check train()'s gradients
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    ContextHandle ctx = open_context(model.get(), cp, adapter_file);

    Score score;
    Batch batch(n_ctx);
    for (int64_t w = 0; w < windows.count(n_ctx); ++w) {
        llama_memory_clear(llama_get_memory(ctx.get()), true);
        const int32_t * labels = windows.labels.data() + w * n_ctx;
        decode(ctx.get(), batch, windows.tokens.data() + w * n_ctx, n_ctx, [&](int i) { return labels[i] >= 0; });
        score_window(ctx.get(), labels, n_ctx, n_vocab, score);
    }
    if (score.labelled == 0) {
        return {NAN, NAN};
    }
    return {score.nll / score.labelled, double(score.correct) / score.labelled};
}

std::vector<float> logits(const std::string & model_path, const std::vector<int32_t> & tokens,
                          const std::string & adapter_file, int n_threads) {
    Model model(model_path, 0, false);
    const int n = (int) tokens.size();
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = std::max(n, 8);
    cp.n_threads = cp.n_threads_batch = n_threads > 0 ? n_threads : default_threads();
    ContextHandle ctx = open_context(model.get(), cp, adapter_file);

    Batch batch(n);
    decode(ctx.get(), batch, tokens.data(), n, [](int) { return true; });
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model.get()));
    std::vector<float> out((size_t) n * n_vocab);
    for (int i = 0; i < n; ++i) {
        memcpy(out.data() + (size_t) i * n_vocab, llama_get_logits_ith(ctx.get(), i), n_vocab * sizeof(float));
    }
    return out;
}

} // namespace dnd
