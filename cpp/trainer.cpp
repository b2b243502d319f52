// One training run's state (trainer.h): the base loaded with writable weights, a training context,
// ggml-opt set up for the trainable tensors (or a LoRA adapter's A and B), and one window run
// forward (and backward, with the optimizer step, when training); also the BF16 matmul precision
// training may run in. train.cpp's loop decides which window runs when.
#include "trainer.h"

#include "ggml-cpu.h"
#include "llama-adapter.h"   // ab_map: LoRA trains the adapter's A and B

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include <unistd.h>

namespace fs = std::filesystem;

namespace dnd {

namespace {

// Sets ggml-cpu's matrix products for a scope and restores them after: BF16 operands when asked and
// the CPU takes them (bf16 says whether: it needs AVX512-BF16 or AMX-BF16), else F32 products on packed
// operands where the build has AVX2 but no AVX-512 (patch 0015; upstream's tinyBLAS otherwise)
struct MatmulPrecision {
    bool was_bf16 = ggml_cpu_get_bf16_matmul();
    bool was_f32_gemm = ggml_cpu_get_f32_gemm();
    bool bf16;
    explicit MatmulPrecision(bool on) : bf16(ggml_cpu_set_bf16_matmul(on) && on) { ggml_cpu_set_f32_gemm(!bf16); }
    ~MatmulPrecision() {
        ggml_cpu_set_bf16_matmul(was_bf16);
        ggml_cpu_set_f32_gemm(was_f32_gemm);
    }
    MatmulPrecision(const MatmulPrecision &) = delete;
    MatmulPrecision & operator=(const MatmulPrecision &) = delete;
};

// evaluations of at least this many windows report their progress
constexpr int64_t EVAL_PROGRESS_MIN_WINDOWS = 20;

ggml_opt_optimizer_params optimizer_params(void * ud) {
    const auto * s = static_cast<const Schedule *>(ud);
    ggml_opt_optimizer_params p = ggml_opt_get_default_optimizer_params(nullptr);
    p.adamw.alpha = s->lr();
    p.adamw.beta1 = s->opts->beta1;
    p.adamw.beta2 = s->opts->beta2;
    p.adamw.eps = s->opts->eps;
    p.adamw.wd = s->opts->weight_decay;
    p.sgd.alpha = s->lr();
    p.sgd.wd = s->opts->weight_decay;
    return p;
}

bool param_filter(const ggml_tensor * t, void * ud) {
    auto * f = static_cast<ParamFilter *>(ud);
    const bool take = !f->none && (f->all || std::regex_search(t->name, f->pattern));
    // mirror llama_set_param: only F32 tensors train, token_embd and rope_freqs never do
    if (take && t->type == GGML_TYPE_F32 && strcmp(t->name, "token_embd.weight") != 0 &&
        strcmp(t->name, "rope_freqs.weight") != 0) {
        f->n_trainable += ggml_nelements(t);
    }
    return take;
}

} // namespace

// linear warm-up, then cosine decay to lr * lr_min_ratio
float Schedule::lr() const {
    const float lr0 = opts->lr;
    if (step < opts->warmup_steps) {
        return std::max(lr0 * float(step + 1) / float(opts->warmup_steps + 1), std::numeric_limits<float>::min());
    }
    const int64_t decay = std::max<int64_t>(1, total_steps - opts->warmup_steps);
    const float progress = std::min(1.0f, float(step - opts->warmup_steps) / float(decay));
    const float lo = lr0 * opts->lr_min_ratio;
    // never exactly 0 (lr_min_ratio 0 at the end of a long run rounds there): ggml-opt asserts alpha > 0
    return std::max(lo + 0.5f * (lr0 - lo) * (1.0f + std::cos(float(M_PI) * progress)),
                    std::numeric_limits<float>::min());
}

Trainer::Trainer(const std::string & base, const TrainOptions & o, int64_t total_steps)
    : opts(o), base_path(base), meta(base), schedule{&o, total_steps},
      bf16_matmul(resolve_matmul_precision(o.matmul_precision) == "bf16"), threads(o.n_threads, "train") {
    init();
    last_log_error();
    load();
    if (opts.method == "lora") {
        attach_adapter();
    }
    init_optimizer();
    window.reset(ggml_opt_dataset_init(GGML_TYPE_I32, GGML_TYPE_I32, opts.n_ctx, opts.n_ctx, 1, 1));
    pred.resize(opts.n_ctx);
}

// The base (writable weights for full training) and a training context over it.
void Trainer::load() {
    const bool lora = opts.method == "lora";
    llama_model_params mp = model_params(opts.n_gpu_layers);
    if (!lora) {
        mp.load_mode = LLAMA_LOAD_MODE_NONE;   // weights must be writable
    }
    model.reset(llama_model_load_from_file(base_path.c_str(), mp));
    if (!model) {
        throw Error("could not load base model " + base_path + ": " + last_log_error());
    }

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = opts.n_ctx;   // n_ubatch == n_ctx: K/V get gradients
    cp.n_threads = cp.n_threads_batch = threads.next();
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;  // FLASH_ATTN_EXT has no backward
    cp.type_k = cp.type_v = GGML_TYPE_F32;                // OUT_PROD has no F16 path
    ctx.reset(llama_init_from_model(model.get(), cp));
    if (!ctx) {
        throw Error("could not create a training context (n_ctx=" + std::to_string(opts.n_ctx) +
                    "): " + last_log_error() + "\nfix: lower --ctx or free memory");
    }
}

// Which tensors train (every F32 weight, those the trainable pattern matches, or LoRA's A and B)
// and the optimizer's settings, through llama_opt_init.
void Trainer::init_optimizer() {
    const bool lora = opts.method == "lora";
    filter.none = lora;
    filter.all = opts.trainable.empty();
    if (!filter.all && !lora) {
        try {
            filter.pattern = std::regex(opts.trainable);
        } catch (const std::regex_error & e) {
            throw Error("trainable-tensor pattern '" + opts.trainable + "' is not a valid regex: " + e.what());
        }
    }
    llama_opt_params lp = {};
    lp.n_ctx_train = opts.n_ctx;
    lp.param_filter = param_filter;
    lp.param_filter_ud = &filter;
    lp.get_opt_pars = optimizer_params;
    lp.get_opt_pars_ud = &schedule;
    lp.optimizer_type = opts.optimizer == "sgd" ? GGML_OPT_OPTIMIZER_TYPE_SGD : GGML_OPT_OPTIMIZER_TYPE_ADAMW;
    lp.n_grad_accum = std::max(1, opts.grad_accum);
    llama_opt_init(ctx.get(), model.get(), lp);
    if (adapter) {
        // llama_opt_init only looks at model weights; ggml-opt trains every tensor flagged as a
        // param when it builds the backward graph, so flagging A and B here is all it takes
        for (auto & [name, w] : adapter->ab_map) {
            ggml_set_param(w.a);
            ggml_set_param(w.b);
            filter.n_trainable += ggml_nelements(w.a) + ggml_nelements(w.b);
        }
    }
    if (filter.n_trainable == 0) {
        throw Error("no tensor is trainable: only F32 tensors train (the base is quantized or "
                    "the trainable pattern matches nothing)\nfix: dequantize the base to F32 first");
    }
}

void Trainer::attach_adapter() {
    if (!opts.lora_init.empty()) {
        adapter = load_adapter(model.get(), opts.lora_init, ctx.get());
        return;
    }
    // llama.cpp builds adapters only from files: write the fresh one, load it, delete it
    const fs::path fresh = fs::temp_directory_path() / ("dndllama-lora-init-" + std::to_string(getpid()) + ".gguf");
    write_new_adapter(model.get(), opts.lora_targets, opts.lora_rank, opts.lora_alpha, opts.seed, fresh.string());
    try {
        adapter = load_adapter(model.get(), fresh.string(), ctx.get());
    } catch (...) {
        fs::remove(fresh);
        throw;
    }
    fs::remove(fresh);
}

int Trainer::n_vocab() const { return llama_vocab_n_tokens(llama_model_get_vocab(model.get())); }

std::tuple<double, int64_t, int64_t> Trainer::run(const Windows & w, int64_t i, bool train) {
    const size_t n = opts.n_ctx;
    memcpy(ggml_opt_dataset_data(window.get())->data, w.tokens.data() + i * n, n * sizeof(int32_t));
    memcpy(ggml_opt_dataset_labels(window.get())->data, w.labels.data() + i * n, n * sizeof(int32_t));
    // patch 0016: training labels weigh what the dataset says (check_windows checked them)
    const bool weighted = train && !w.weights.empty();
    if (!llama_opt_set_label_weights(ctx.get(), weighted ? w.weights.data() + i * n : nullptr, weighted ? n : 0)) {
        throw Error("the training context refused the label weights of window " + std::to_string(i));
    }
    ResultHandle result(ggml_opt_result_init());
    const MatmulPrecision precision(train && bf16_matmul);
    const int n_threads = threads.next();
    llama_set_n_threads(ctx.get(), n_threads, n_threads);   // patch 0014: training computes with it
    if (train) {
        llama_opt_epoch(ctx.get(), window.get(), result.get(), nullptr, 1, nullptr, nullptr);
    } else {
        llama_opt_epoch(ctx.get(), window.get(), nullptr, result.get(), 0, nullptr, nullptr);
    }
    double loss = 0, unc = 0;
    ggml_opt_result_loss(result.get(), &loss, &unc);
    ggml_opt_result_pred(result.get(), pred.data());
    // patch 0013: one prediction per labelled position, in order
    int64_t correct = 0, labelled = 0;
    for (size_t k = 0; k < n; ++k) {
        const int32_t label = w.labels[i * n + k];
        if (label >= 0) {
            correct += pred[labelled] == label;
            labelled += 1;
        }
    }
    if (!std::isfinite(loss)) {
        throw Error("training diverged (loss is " + std::to_string(loss) + ")\nfix: lower --lr");
    }
    return {loss, correct, labelled};
}

std::pair<double, double> Trainer::evaluate(const Windows & w, const std::function<void(int64_t, int64_t)> & progress) {
    double loss_sum = 0;
    int64_t correct = 0, labelled = 0;
    const int64_t total = w.count(opts.n_ctx);
    const int64_t every = total >= EVAL_PROGRESS_MIN_WINDOWS ? std::max<int64_t>(1, total / 10) : 0;
    for (int64_t i = 0; i < total; ++i) {
        auto [loss, c, l] = run(w, i, false);
        loss_sum += loss * l;   // window losses are means over their labelled positions
        correct += c;
        labelled += l;
        if (every && (i + 1) % every == 0 && i + 1 < total) {
            progress(i + 1, total);
        }
    }
    return {labelled ? loss_sum / labelled : NAN, labelled ? double(correct) / labelled : NAN};
}

void Trainer::save(const std::string & path) {
    if (adapter) {
        save_adapter(adapter, adapter_path(path), opts.kv);
    }
    save_weights(model.get(), meta, path, opts.kv, adapter);
}

bool bf16_matmul_supported() {
    return MatmulPrecision(true).bf16;
}

bool f32_gemm_supported() {
    const bool was = ggml_cpu_get_f32_gemm();
    const bool supported = ggml_cpu_set_f32_gemm(true);
    ggml_cpu_set_f32_gemm(was);
    return supported;
}

std::string resolve_matmul_precision(const std::string & precision) {
    if (precision == "f32") {
        return "f32";
    }
    if (precision != "bf16" && precision != "auto") {
        throw Error("unknown matmul precision '" + precision + "' (f32, bf16, auto)");
    }
    if (bf16_matmul_supported()) {
        return "bf16";
    }
    if (precision == "bf16") {
        throw Error("matmul precision bf16 needs a CPU with AVX512-BF16 or AMX-BF16 (AMD Zen 4 or later, Intel "
                    "Cooper Lake or Xeon 4th generation or later) and a build for it (GGML_NATIVE on such a CPU)"
                    "\nfix: set matmul_precision to auto or f32");
    }
    return "f32";
}

} // namespace dnd
