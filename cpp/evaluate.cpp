// Scoring without training: a model (optionally with a LoRA adapter) decodes token sequences with
// plain llama_decode. `evaluate` turns windows into loss and accuracy (cross-entropy on the host),
// `logits` returns the raw rows; both, and divergence.cpp, open their context and decode through
// the two functions here.
#include "native.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace dnd {

ContextHandle open_scoring_context(const Model & model, int n_ctx, int n_batch, int n_threads, bool training_numerics,
                                   const std::string & adapter_file, const char * what) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = cp.n_ubatch = n_batch;
    cp.n_threads = cp.n_threads_batch = resolve_threads(n_threads, what);
    if (training_numerics) {
        // F32 K/V and no flash attention, as train() runs: losses then agree with train()'s to
        // float rounding, and finite differences of evaluate's loss can check train()'s gradients
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
        cp.type_k = cp.type_v = GGML_TYPE_F32;
    }
    last_log_error();
    ContextHandle ctx(llama_init_from_model(model.get(), cp));
    if (!ctx) {
        throw Error(std::string(what) + ": could not create a context of " + std::to_string(n_ctx) + " tokens for " +
                    model.path() + ": " + last_log_error() + "\nfix: score shorter sequences or free memory");
    }
    if (!adapter_file.empty()) {
        load_adapter(model.get(), adapter_file, ctx.get());
    }
    return ctx;
}

void decode_tokens(llama_context * ctx, const int32_t * tokens, int n, int first_pos,
                   const std::function<bool(int)> & wants_logits, const char * what) {
    Batch batch(n);
    for (int i = 0; i < n; ++i) {
        batch.add(tokens[i], first_pos + i, 0, wants_logits(i));
    }
    if (llama_decode(ctx, batch.b) != 0) {
        throw Error(std::string(what) + ": decode failed: " + last_log_error());
    }
}

namespace {

struct Score {
    double nll = 0;
    int64_t correct = 0, labelled = 0;
};

// Cross-entropy and argmax accuracy of one decoded window's labelled positions.
void score_window(llama_context * ctx, const int32_t * labels, int n, int n_vocab, Score & score) {
    for (int i = 0; i < n; ++i) {
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
    const Model model(model_path, n_gpu_layers, false);
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model.get()));
    check_windows(windows, n_ctx, n_vocab, "evaluation set");
    ContextHandle ctx = open_scoring_context(model, n_ctx, n_ctx, n_threads, true, adapter_file, "evaluate");

    Score score;
    for (int64_t w = 0; w < windows.count(n_ctx); ++w) {
        const int32_t * labels = windows.labels.data() + w * n_ctx;
        // attention is causal: positions after the last label (a window's padding) change no score
        int n = n_ctx;
        while (n > 0 && labels[n - 1] < 0) {
            --n;
        }
        if (n == 0) {
            continue;
        }
        llama_memory_clear(llama_get_memory(ctx.get()), true);
        decode_tokens(ctx.get(), windows.tokens.data() + w * n_ctx, n, 0,
                      [&](int i) { return labels[i] >= 0; }, "evaluate");
        score_window(ctx.get(), labels, n, n_vocab, score);
    }
    if (score.labelled == 0) {
        return {NAN, NAN};
    }
    return {score.nll / score.labelled, double(score.correct) / score.labelled};
}

std::vector<float> logits(const std::string & model_path, const std::vector<int32_t> & tokens,
                          const std::string & adapter_file, int n_threads) {
    const Model model(model_path, 0, false);
    const int n = (int) tokens.size();
    // inference's own numerics: these rows are compared with a merged model's, as a runtime runs both
    ContextHandle ctx = open_scoring_context(model, std::max(n, 8), std::max(n, 8), n_threads, false,
                                             adapter_file, "logits");
    decode_tokens(ctx.get(), tokens.data(), n, 0, [](int) { return true; }, "logits");
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model.get()));
    std::vector<float> out((size_t) n * n_vocab);
    for (int i = 0; i < n; ++i) {
        memcpy(out.data() + (size_t) i * n_vocab, llama_get_logits_ith(ctx.get(), i), n_vocab * sizeof(float));
    }
    return out;
}

} // namespace dnd
