// Fine-tuning through llama.cpp's ggml-opt (AdamW), in full or as a LoRA adapter on a frozen base, one
// window per llama_opt_epoch call so that window order, learning-rate schedule, evaluation,
// checkpoints and cancellation stay in our hands.
#include "native.h"

#include "ggml-cpu.h"
#include "ggml-opt.h"
#include "llama.h"
#include "llama-adapter.h"   // ab_map: LoRA trains the adapter's A and B

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <regex>

#include <unistd.h>

namespace fs = std::filesystem;

namespace dnd {

namespace {

using Clock = std::chrono::steady_clock;

// Sets ggml-cpu's BF16 matmul precision for a scope and restores it after; bf16 says whether the
// CPU took it (it needs AVX512-BF16 or AMX-BF16)
struct MatmulPrecision {
    bool was = ggml_cpu_get_bf16_matmul();
    bool bf16;
    explicit MatmulPrecision(bool on) : bf16(ggml_cpu_set_bf16_matmul(on) && on) {}
    ~MatmulPrecision() { ggml_cpu_set_bf16_matmul(was); }
    MatmulPrecision(const MatmulPrecision &) = delete;
    MatmulPrecision & operator=(const MatmulPrecision &) = delete;
};

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// evaluations of at least this many windows report their progress
constexpr int64_t EVAL_PROGRESS_MIN_WINDOWS = 20;

struct Schedule {
    const TrainOptions * opts;
    int64_t total_steps;
    int64_t step = 0;   // optimizer steps taken so far

    // linear warm-up, then cosine decay to lr * lr_min_ratio
    float lr() const {
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
};

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

struct ParamFilter {
    std::regex pattern;
    bool all = true;
    bool none = false;   // LoRA: the whole base is frozen
    uint64_t n_trainable = 0;
};

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

void check_windows(const Windows & w, int n_ctx, int n_vocab, const char * what) {
    if (w.tokens.size() != w.labels.size()) {
        throw Error(std::string(what) + ": tokens and labels differ in length");
    }
    if (w.tokens.size() % n_ctx != 0) {
        throw Error(std::string(what) + ": " + std::to_string(w.tokens.size()) +
                    " tokens is not a whole number of windows of n_ctx=" + std::to_string(n_ctx));
    }
    for (size_t i = 0; i < w.tokens.size(); ++i) {
        if (w.tokens[i] < 0 || w.tokens[i] >= n_vocab || w.labels[i] < -1 || w.labels[i] >= n_vocab) {
            throw Error(std::string(what) + ": token or label id at position " + std::to_string(i) +
                        " is outside the model's vocabulary of " + std::to_string(n_vocab) +
                        " (was the dataset tokenized with another model?)");
        }
    }
}

// Everything one training run holds: model, context, the one-window dataset and the schedule.
struct Trainer {
    const TrainOptions & opts;
    std::string base_path;
    Metadata meta;
    ModelHandle model;
    ContextHandle ctx;      // declared after model: freed before it
    DatasetHandle window;
    Schedule schedule;
    ParamFilter filter;
    llama_adapter_lora * adapter = nullptr;   // LoRA only; freed with the model
    std::vector<int32_t> pred;
    // training steps' products in BF16 (evaluation stays F32); resolved first, so a bad setting fails
    // before the model loads
    const bool bf16_matmul;

    Trainer(const std::string & base, const TrainOptions & o, int64_t total_steps)
        : opts(o), base_path(base), meta(base), schedule{&o, total_steps},
          bf16_matmul(resolve_matmul_precision(o.matmul_precision) == "bf16") {
        init();
        last_log_error();
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
        cp.n_threads = cp.n_threads_batch = resolve_threads(opts.n_threads, "train");
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;  // FLASH_ATTN_EXT has no backward
        cp.type_k = cp.type_v = GGML_TYPE_F32;                // OUT_PROD has no F16 path
        ctx.reset(llama_init_from_model(model.get(), cp));
        if (!ctx) {
            throw Error("could not create a training context (n_ctx=" + std::to_string(opts.n_ctx) +
                        "): " + last_log_error() + "\nfix: lower --ctx or free memory");
        }

        if (lora) {
            attach_adapter();
        }
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

        window.reset(ggml_opt_dataset_init(GGML_TYPE_I32, GGML_TYPE_I32, opts.n_ctx, opts.n_ctx, 1, 1));
        pred.resize(opts.n_ctx);
    }

    void attach_adapter() {
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

    int n_vocab() const { return llama_vocab_n_tokens(llama_model_get_vocab(model.get())); }

    // Runs one window forward (and backward + maybe an optimizer step when training).
    // Returns {loss over labelled positions, correct predictions, labelled positions}.
    std::tuple<double, int64_t, int64_t> run(const Windows & w, int64_t i, bool train) {
        const size_t n = opts.n_ctx;
        memcpy(ggml_opt_dataset_data(window.get())->data, w.tokens.data() + i * n, n * sizeof(int32_t));
        memcpy(ggml_opt_dataset_labels(window.get())->data, w.labels.data() + i * n, n * sizeof(int32_t));
        ResultHandle result(ggml_opt_result_init());
        const MatmulPrecision precision(train && bf16_matmul);
        if (train) {
            llama_opt_epoch(ctx.get(), window.get(), result.get(), nullptr, 1, nullptr, nullptr);
        } else {
            llama_opt_epoch(ctx.get(), window.get(), nullptr, result.get(), 0, nullptr, nullptr);
        }
        double loss = 0, unc = 0;
        ggml_opt_result_loss(result.get(), &loss, &unc);
        ggml_opt_result_pred(result.get(), pred.data());
        int64_t correct = 0, labelled = 0;
        for (size_t k = 0; k < n; ++k) {
            const int32_t label = w.labels[i * n + k];
            if (label >= 0) {
                labelled += 1;
                correct += pred[k] == label;
            }
        }
        if (!std::isfinite(loss)) {
            throw Error("training diverged (loss is " + std::to_string(loss) + ")\nfix: lower --lr");
        }
        return {loss, correct, labelled};
    }

    // `progress(done, total)` at a coarse grain (about every tenth of a long evaluation), so a
    // validation set of hundreds of windows is never silent
    std::pair<double, double> evaluate(const Windows & w, const std::function<void(int64_t, int64_t)> & progress) {
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

    // LoRA: the adapter next to the merged model, so either can ship
    void save(const std::string & path) {
        if (adapter) {
            save_adapter(adapter, adapter_path(path), opts.kv);
        }
        save_weights(model.get(), meta, path, opts.kv, adapter);
    }
};

} // namespace

bool bf16_matmul_supported() {
    return MatmulPrecision(true).bf16;
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

namespace {

// The optimizer settings ggml-opt asserts on (GGML_ASSERT(alpha > 0), wd in [0, 1], ...), checked as
// the float32 values it will see: a double lr of 1e-300 or 1e39 passes `> 0` but is 0 or inf here.
void check_options(const TrainOptions & o) {
    auto in = [](const char * name, double v, double lo, double hi, const char * fix) {
        if (!std::isfinite(v) || v < lo || v > hi) {
            throw Error(std::string(name) + " = " + std::to_string(v) + " is out of range (a finite float32 in [" +
                        std::to_string(lo) + ", " + std::to_string(hi) + "])\nfix: " + fix);
        }
    };
    if (!(std::isfinite(o.lr) && o.lr >= std::numeric_limits<float>::min() && o.lr <= 1.0f)) {
        throw Error("lr = " + std::to_string(o.lr) + " is not a learning rate training can use (a positive, "
                    "finite float32 of at least 1.2e-38 and at most 1)\nfix: pass a learning rate such as 1e-4");
    }
    in("weight_decay", o.weight_decay, 0, 1, "pass a weight decay in [0, 1], such as 0.01");
    in("lr_min_ratio", o.lr_min_ratio, 0, 1, "pass a ratio in [0, 1], such as 0.1");
    in("beta1", o.beta1, 0, 1, "pass a beta in [0, 1]");
    in("beta2", o.beta2, 0, 1, "pass a beta in [0, 1]");
    in("eps", o.eps, 0, 1, "pass a small epsilon such as 1e-8");
    in("lora_alpha", o.lora_alpha, 1e-30, 1e6, "pass a positive alpha such as 32");
    struct Count { const char * name; int64_t value, min; };   // lora_rank: lora.cpp checks it
    const Count counts[] = {{"warmup_steps", o.warmup_steps, 0}, {"save_every", o.save_every, 0},
                            {"eval_every", o.eval_every, 0}, {"start_step", o.start_step, 0},
                            {"grad_accum", o.grad_accum, 1}, {"n_gpu_layers", o.n_gpu_layers, -1}};
    for (const auto & c : counts) {
        if (c.value < c.min) {
            throw Error(std::string(c.name) + " = " + std::to_string(c.value) + " is below " + std::to_string(c.min) +
                        "\nfix: pass " + std::to_string(c.min) + " or more");
        }
    }
    resolve_threads(o.n_threads, "train");
}

} // namespace

TrainResult train(const std::string & base_path, const std::string & out_path,
                  const Windows & train_set, const Windows & val_set,
                  const TrainOptions & opts, const ProgressFn & progress) {
    if (opts.n_ctx <= 0 || opts.n_ctx % 256 != 0 || opts.epochs <= 0) {
        // llama.cpp pads every context to a multiple of 256, and a training window must fill
        // the whole context for K and V to receive gradients
        throw Error("n_ctx must be a positive multiple of 256 and epochs positive (got n_ctx=" +
                    std::to_string(opts.n_ctx) + ", epochs=" + std::to_string(opts.epochs) + ")");
    }
    if (opts.method != "full" && opts.method != "lora") {
        throw Error("unknown training method '" + opts.method + "' (full, lora)");
    }
    if (opts.optimizer != "adamw" && opts.optimizer != "sgd") {
        throw Error("unknown optimizer '" + opts.optimizer + "' (adamw, sgd)");
    }
    check_options(opts);
    const int64_t n_train = train_set.count(opts.n_ctx);
    if (n_train == 0) {
        throw Error("the training set is empty: no window of n_ctx tokens");
    }
    const int accum = std::max(1, opts.grad_accum);
    int64_t total_steps = opts.epochs * n_train / accum;
    if (opts.max_steps > 0) {
        total_steps = std::min(total_steps, opts.max_steps);
    }
    if (total_steps == 0) {
        throw Error("fewer windows (" + std::to_string(n_train) + ") than --grad-accum (" +
                    std::to_string(accum) + "): no optimizer step would run");
    }

    Trainer trainer(base_path, opts, total_steps);
    check_windows(train_set, opts.n_ctx, trainer.n_vocab(), "training set");
    check_windows(val_set, opts.n_ctx, trainer.n_vocab(), "validation set");

    TrainResult res;
    res.n_trainable = trainer.filter.n_trainable;
    res.matmul_precision = trainer.bf16_matmul ? "bf16" : "f32";
    Progress p;
    p.epochs = opts.epochs;
    p.total_steps = total_steps;

    const auto t0 = Clock::now();
    std::mt19937 rng(opts.seed);
    std::vector<int64_t> order(n_train);
    double step_loss = 0;
    int64_t step_correct = 0, step_labelled = 0, windows_in_step = 0;
    // Resuming replays the same shuffles and skips the windows already trained on, so the run
    // continues where it stopped (the optimizer's moments start afresh).
    const int64_t start_step = std::clamp<int64_t>(opts.start_step, 0, total_steps);
    int64_t skip_windows = start_step * accum;
    res.steps = trainer.schedule.step = start_step;

    auto report = [&](const char * event) {
        p.event = event;
        p.elapsed_s = seconds_since(t0);
        p.tokens_per_s = res.tokens / std::max(1e-9, p.elapsed_s);
        const int64_t done = res.steps - start_step;
        p.eta_s = done ? p.elapsed_s / done * (total_steps - res.steps) : 0;
        if (progress && !progress(p)) {
            res.cancelled = true;
        }
    };
    auto checkpoint = [&](const std::string & name) {
        fs::create_directories(opts.checkpoint_dir);
        p.checkpoint = (fs::path(opts.checkpoint_dir) / (name + ".gguf")).string();
        trainer.save(p.checkpoint);
        report("checkpoint");
        p.checkpoint.clear();
    };

    const bool has_val = val_set.count(opts.n_ctx) > 0;
    auto evaluate = [&]() {
        std::tie(p.val_loss, p.val_accuracy) = trainer.evaluate(val_set, [&](int64_t done, int64_t total) {
            p.eval_done = done;
            p.eval_total = total;
            report("eval_progress");
        });
        res.val_loss = p.val_loss;
        if (res.best_val_loss < 0 || p.val_loss < res.best_val_loss) {
            res.best_val_loss = p.val_loss;
        }
        report("eval");
    };

    for (int epoch = 1; epoch <= opts.epochs && !res.cancelled && res.steps < total_steps; ++epoch) {
        p.epoch = epoch;
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), rng);
        bool trained = false;
        for (int64_t k = 0; k < n_train; ++k) {
            const int64_t i = order[k];
            if (skip_windows > 0) {
                --skip_windows;
                continue;
            }
            trained = true;
            auto [loss, c, l] = trainer.run(train_set, i, true);
            res.tokens += opts.n_ctx;
            step_loss += loss;
            step_correct += c;
            step_labelled += l;
            if (++windows_in_step < accum) {
                continue;
            }
            // ggml-opt has just applied the optimizer step for these `accum` windows
            res.steps = ++trainer.schedule.step;
            p.step = res.steps;
            p.loss = step_loss / windows_in_step;
            p.accuracy = step_labelled ? double(step_correct) / step_labelled : 0;
            res.train_loss = p.loss;
            step_loss = 0;
            step_correct = step_labelled = windows_in_step = 0;
            report("step");
            if (res.cancelled || res.steps >= total_steps) {
                break;
            }
            // a mid-epoch evaluation is followed by its checkpoint, so it can be chosen later
            const bool epoch_end = k == n_train - 1;   // evaluated below anyway
            const bool eval_now = opts.eval_every > 0 && res.steps % opts.eval_every == 0 && has_val && !epoch_end;
            if (eval_now) {
                evaluate();
            }
            const bool save_now = opts.save_every > 0 && res.steps % opts.save_every == 0;
            if (!opts.checkpoint_dir.empty() && !res.cancelled && (eval_now || save_now)) {
                checkpoint("step-" + std::to_string(res.steps));
            }
            if (res.cancelled) {
                break;
            }
        }
        if (!trained || res.cancelled) {
            continue;   // an epoch skipped by a resume, or a stop: nothing new to evaluate or save
        }
        if (has_val) {
            evaluate();
        }
        if (!opts.checkpoint_dir.empty()) {
            checkpoint("epoch-" + std::to_string(epoch));
        }
    }

    if (!out_path.empty() && !res.cancelled) {
        trainer.save(out_path);   // a cancelled run keeps its epoch checkpoints, not a final model
    }
    res.seconds = seconds_since(t0);
    res.tokens_per_s = res.tokens / std::max(1e-9, res.seconds);
    report("done");
    return res;
}

// ---- evaluation without training: plain llama_decode, cross-entropy on the host ----------------

std::pair<double, double> evaluate(const std::string & model_path, const Windows & windows,
                                   int n_ctx, int n_threads, int n_gpu_layers, const std::string & adapter_file) {
    init();
    llama_model_params mp = model_params(n_gpu_layers);
    ModelHandle model(llama_model_load_from_file(model_path.c_str(), mp));
    if (!model) {
        throw Error("could not load " + model_path + ": " + last_log_error());
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model.get()));
    check_windows(windows, n_ctx, n_vocab, "evaluation set");

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx;
    cp.n_threads = cp.n_threads_batch = resolve_threads(n_threads, "evaluate");
    // the numerics of training (F32 K/V, no flash attention): losses then agree with train()'s to
    // float rounding, and finite differences of this loss can check train()'s gradients
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    ContextHandle ctx(llama_init_from_model(model.get(), cp));
    if (!ctx) {
        throw Error("could not create an evaluation context: " + last_log_error());
    }
    if (!adapter_file.empty()) {
        load_adapter(model.get(), adapter_file, ctx.get());
    }

    double nll = 0;
    int64_t correct = 0, labelled = 0;
    Batch batch(n_ctx);
    for (int64_t w = 0; w < windows.count(n_ctx); ++w) {
        llama_memory_clear(llama_get_memory(ctx.get()), true);
        batch.clear();
        for (int i = 0; i < n_ctx; ++i) {
            batch.add(windows.tokens[w * n_ctx + i], i, 0, windows.labels[w * n_ctx + i] >= 0);
        }
        if (llama_decode(ctx.get(), batch.b) != 0) {
            throw Error("evaluation decode failed: " + last_log_error());
        }
        for (int i = 0; i < n_ctx; ++i) {
            const int32_t label = windows.labels[w * n_ctx + i];
            if (label < 0) {
                continue;
            }
            const float * logits = llama_get_logits_ith(ctx.get(), i);
            const float mx = *std::max_element(logits, logits + n_vocab);
            double sum = 0;
            for (int v = 0; v < n_vocab; ++v) {
                sum += std::exp(double(logits[v]) - mx);
            }
            nll += std::log(sum) + mx - logits[label];
            correct += (std::max_element(logits, logits + n_vocab) - logits) == label;
            labelled += 1;
        }
    }
    return {labelled ? nll / labelled : NAN, labelled ? double(correct) / labelled : NAN};
}

// ---- gradient checks ------------------------------------------------------------------------

std::pair<double, std::vector<std::vector<float>>> op_gradients(
    const std::string & op, const std::vector<std::vector<float>> & inputs,
    const std::vector<int64_t> & shape, const std::vector<float> & weights) {
    init();
    if (shape.empty() || shape.size() > 4) {
        throw Error("shape must have 1 to 4 dimensions");
    }
    int64_t ne[4] = {1, 1, 1, 1};
    for (size_t i = 0; i < shape.size(); ++i) {
        ne[i] = shape[i];
    }
    const int64_t n = ne[0] * ne[1] * ne[2] * ne[3];
    size_t mem = 64 * 1024 * 1024 + 16 * n * sizeof(float) * (inputs.size() + 8);
    GgmlHandle ctx = ggml_context_of(mem);

    std::vector<ggml_tensor *> in;
    for (const auto & values : inputs) {
        if ((int64_t) values.size() != n) {
            throw Error("every input must have " + std::to_string(n) + " values");
        }
        ggml_tensor * t = ggml_new_tensor_4d(ctx.get(), GGML_TYPE_F32, ne[0], ne[1], ne[2], ne[3]);
        memcpy(t->data, values.data(), n * sizeof(float));
        in.push_back(t);
    }
    auto need = [&](size_t k) {
        if (in.size() != k) {
            throw Error(op + " takes " + std::to_string(k) + " inputs");
        }
    };

    ggml_tensor * out = nullptr;
    bool labels_input = false;   // the last input is a label tensor: no gradient
    if (op == "geglu") {
        need(2); out = ggml_geglu_split(ctx.get(), in[0], in[1]);
    } else if (op == "swiglu") {
        need(2); out = ggml_swiglu_split(ctx.get(), in[0], in[1]);
    } else if (op == "gelu") {
        need(1); out = ggml_gelu(ctx.get(), in[0]);
    } else if (op == "tanh") {
        need(1); out = ggml_tanh(ctx.get(), in[0]);
    } else if (op == "concat0" || op == "concat1") {
        need(2); out = ggml_concat(ctx.get(), in[0], in[1], op == "concat0" ? 0 : 1);
    } else if (op == "mean_centered") {
        // x - mean(x) per row, the core of gemma3n's activation sparsity: MEAN and a broadcast SUB
        need(1); out = ggml_sub(ctx.get(), in[0], ggml_mean(ctx.get(), in[0]));
    } else if (op == "magnitude_matched") {
        // a * |b| / |a| per row, gemma3n's AltUp projections: broadcast MUL and DIV of row norms
        need(2);
        auto norm = [&](ggml_tensor * x) { return ggml_sqrt(ctx.get(), ggml_sum_rows(ctx.get(), ggml_sqr(ctx.get(), x))); };
        out = ggml_div(ctx.get(), ggml_mul(ctx.get(), in[0], norm(in[1])), norm(in[0]));
    } else if (op == "transposed_scale" || op == "transposed_rms_norm") {
        // the gradient reaching SCALE / RMS_NORM is a transposed view (gemma3n's permuted AltUp streams)
        need(1);
        ggml_tensor * y = op == "transposed_scale" ? ggml_scale(ctx.get(), in[0], 0.5f) : ggml_rms_norm(ctx.get(), in[0], 1e-6f);
        out = ggml_cont(ctx.get(), ggml_transpose(ctx.get(), y));
    } else if (op == "transposed_plus_square") {
        // x's first gradient is a transposed view, then a second one is added to it
        // (gemma3n: K/V that both their own layer and the KV-sharing layers attend to)
        need(1);
        ggml_tensor * sq = ggml_sqr(ctx.get(), in[0]);
        ggml_tensor * t = ggml_cont(ctx.get(), ggml_transpose(ctx.get(), in[0]));
        out = ggml_add(ctx.get(), sq, ggml_reshape(ctx.get(), t, sq));
    } else if (op == "cross_entropy") {
        // exactly the loss ggml-opt builds (patched): mean over rows that carry a label
        need(2); labels_input = true;
        ggml_tensor * ce = ggml_cross_entropy_loss(ctx.get(), in[0], in[1]);
        ggml_tensor * nl = ggml_clamp(ctx.get(), ggml_sum(ctx.get(), in[1]), 1.0f, INFINITY);
        out = ggml_scale(ctx.get(), ggml_div(ctx.get(), ce, nl), (float) ggml_nrows(in[0]));
    } else {
        throw Error("unknown op '" + op + "' (geglu, swiglu, gelu, tanh, concat0, concat1, mean_centered, "
                    "magnitude_matched, transposed_scale, transposed_rms_norm, transposed_plus_square, cross_entropy)");
    }
    for (size_t i = 0; i < in.size() - (labels_input ? 1 : 0); ++i) {
        ggml_set_param(in[i]);
    }

    ggml_tensor * loss = out;
    if (ggml_nelements(out) > 1) {
        if ((int64_t) weights.size() != ggml_nelements(out)) {
            throw Error("weights must have one value per output element");
        }
        ggml_tensor * w = ggml_new_tensor_4d(ctx.get(), GGML_TYPE_F32, out->ne[0], out->ne[1], out->ne[2], out->ne[3]);
        memcpy(w->data, weights.data(), weights.size() * sizeof(float));
        loss = ggml_sum(ctx.get(), ggml_mul(ctx.get(), out, w));
    }
    ggml_set_loss(loss);

    ggml_cgraph * gb = ggml_new_graph_custom(ctx.get(), GGML_DEFAULT_GRAPH_SIZE, true);
    ggml_build_forward_expand(gb, loss);
    ggml_build_backward_expand(ctx.get(), gb, nullptr);
    ggml_graph_reset(gb);
    if (ggml_graph_compute_with_ctx(ctx.get(), gb, 1) != GGML_STATUS_SUCCESS) {
        throw Error("graph computation failed");
    }

    std::vector<std::vector<float>> grads;
    for (size_t i = 0; i < in.size() - (labels_input ? 1 : 0); ++i) {
        const ggml_tensor * g = ggml_graph_get_grad(gb, in[i]);
        const float * d = static_cast<const float *>(g->data);
        grads.emplace_back(d, d + n);
    }
    return {double(*static_cast<const float *>(loss->data)), grads};
}

} // namespace dnd
