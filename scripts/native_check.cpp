// A small C++ driver over dndllama's native API (cpp/native.h) for builds where the Python
// extension is impractical: scripts/cross_build_aarch64.sh runs it under qemu-aarch64, and natively
// on the build machine, then compares the two.
//
//     native_check TINY_GEMMA3.gguf TINY_LLAMA.gguf WORK_DIR
//
// 1. Gradient checks of our backward ops (patch 0001's GELU/GEGLU, 0006's Gemma 3n ops) against
//    central differences of the forward value: fails above a 2 % relative error.
// 2. A tiny training per architecture (AdamW, 6 steps) whose loss must fall, then one SGD step
//    from the base whose validation loss after the step is printed with 6 digits: the script compares
//    those lines with the build machine's, so a wrong gradient on either side shows as a mismatch.
// Prints `check <name> ok ...` lines and exits non-zero on the first failure.

#include "native.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

[[noreturn]] void fail(const std::string & what) {
    fprintf(stderr, "FAIL: %s\n", what.c_str());
    exit(1);
}

std::vector<float> uniform(std::mt19937 & rng, size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto & x : v) {
        x = d(rng);
    }
    return v;
}

// analytic gradient of sum(op(inputs) * weights) against central differences, every element
void check_op(const std::string & op, int n_inputs, std::mt19937 & rng) {
    const std::vector<int64_t> shape = {16, 3};
    const size_t n = 48;
    std::vector<std::vector<float>> in;
    for (int i = 0; i < n_inputs; ++i) {
        in.push_back(uniform(rng, n, -3.0f, 3.0f));
    }
    const std::vector<float> w = uniform(rng, n, -1.0f, 1.0f);
    const auto grads = dnd::op_gradients(op, in, shape, w).second;
    const float eps = 0.1f;   // ggml's forward GELU reads an fp16 table: smaller steps measure its noise
    double err = 0, norm = 0;
    for (int i = 0; i < n_inputs; ++i) {
        for (size_t j = 0; j < n; ++j) {
            auto plus = in, minus = in;
            plus[i][j] += eps;
            minus[i][j] -= eps;
            const double numeric = (dnd::op_gradients(op, plus, shape, w).first -
                                    dnd::op_gradients(op, minus, shape, w).first) / (2.0 * eps);
            err += (grads[i][j] - numeric) * (grads[i][j] - numeric);
            norm += numeric * numeric;
        }
    }
    const double rel = std::sqrt(err / std::max(norm, 1e-30));
    if (!(rel < 2e-2)) {
        fail(op + " gradient differs from finite differences by " + std::to_string(rel));
    }
    printf("check op_gradient_%s ok rel_error=%.2e\n", op.c_str(), rel);
}

dnd::Windows windows(const std::string & model_path, const std::string & text, int n_ctx, int count) {
    dnd::Model model(model_path, 0, true);
    const std::vector<int32_t> toks = model.tokenize(text, true, true);
    dnd::Windows w;
    for (int k = 0; k < count; ++k) {
        for (int i = 0; i < n_ctx; ++i) {   // each window starts k tokens further into the text
            w.tokens.push_back(toks[(k + i) % toks.size()]);
            w.labels.push_back(toks[(k + i + 1) % toks.size()]);
        }
    }
    return w;
}

void check_training(const std::string & name, const std::string & path, const std::string & work) {
    const int n_ctx = 256;
    const dnd::Windows train = windows(path, "the goblin attacks you. the dragon sleeps under the hill.", n_ctx, 3);
    const dnd::Windows val = windows(path, "the dragon attacks the goblin.", n_ctx, 1);

    dnd::TrainOptions o;
    o.n_ctx = n_ctx, o.epochs = 2, o.lr = 1e-3f, o.n_threads = 2, o.matmul_precision = "auto";
    std::vector<double> losses;
    const auto result = dnd::train(path, work + "/" + name + "-adamw.gguf", train, {}, o, [&](const dnd::Progress & p) {
        if (p.event == "step") {
            losses.push_back(p.loss);
        }
        return true;
    });
    if (losses.size() != 6 || !std::isfinite(losses.back()) || !(losses.back() < losses.front())) {
        fail(name + " training: the loss did not fall over 6 AdamW steps");
    }
    printf("check train_%s ok products=%s loss %.4f -> %.4f\n", name.c_str(), result.matmul_precision.c_str(),
           losses.front(), losses.back());

    // one plain SGD step (lr 1, no decay): the update is the gradient itself
    dnd::TrainOptions s;
    s.n_ctx = n_ctx, s.epochs = 1, s.max_steps = 1, s.lr = 1.0f, s.n_threads = 2, s.optimizer = "sgd";
    s.weight_decay = 0.0f, s.lr_min_ratio = 1.0f, s.matmul_precision = "f32";
    dnd::train(path, work + "/" + name + "-sgd.gguf", train, {}, s, nullptr);
    const double before = dnd::evaluate(path, val, n_ctx, 2, 0).first;
    const double after = dnd::evaluate(work + "/" + name + "-sgd.gguf", val, n_ctx, 2, 0).first;
    printf("compare sgd_step_%s val_loss_before=%.6f val_loss_after=%.6f\n", name.c_str(), before, after);
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s TINY_GEMMA3.gguf TINY_LLAMA.gguf WORK_DIR\n", argv[0]);
        return 2;
    }
    try {
        dnd::init();
        std::mt19937 rng(7);
        // patch 0001 (Gemma 3) and 0006 (Gemma 3n), as tests/test_native.py checks them
        const std::pair<const char *, int> ops[] = {
            {"geglu", 2}, {"gelu", 1}, {"swiglu", 2}, {"tanh", 1}, {"mean_centered", 1}, {"magnitude_matched", 2},
            {"transposed_scale", 1}, {"transposed_rms_norm", 1}, {"transposed_plus_square", 1}};
        for (const auto & [op, n_inputs] : ops) {
            check_op(op, n_inputs, rng);
        }
        check_training("gemma3", argv[1], argv[3]);
        check_training("llama", argv[2], argv[3]);
    } catch (const std::exception & e) {
        fail(e.what());
    }
    printf("all native checks passed (bf16 products supported here: %s)\n",
           dnd::bf16_matmul_supported() ? "yes" : "no");
    return 0;
}
