// Fine-tuning through llama.cpp's ggml-opt (AdamW or SGD), in full or as a LoRA adapter on a frozen
// base, one window per llama_opt_epoch call so that window order, learning-rate schedule,
// evaluation, checkpoints and cancellation stay in our hands: train() checks its settings and
// windows, then Run walks epochs and steps over a Trainer (trainer.cpp, one window at a time).
#include "trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>

namespace fs = std::filesystem;

namespace dnd {

void check_windows(const Windows & w, int n_ctx, int n_vocab, const char * what) {
    if (w.tokens.size() != w.labels.size()) {
        throw Error(std::string(what) + ": tokens and labels differ in length");
    }
    if (w.tokens.size() % n_ctx != 0) {
        throw Error(std::string(what) + ": " + std::to_string(w.tokens.size()) +
                    " tokens is not a whole number of windows of n_ctx=" + std::to_string(n_ctx));
    }
    if (!w.weights.empty() && w.weights.size() != w.labels.size()) {
        throw Error(std::string(what) + ": " + std::to_string(w.weights.size()) + " label weights for " +
                    std::to_string(w.labels.size()) + " labels");
    }
    for (size_t i = 0; i < w.weights.size(); ++i) {
        if (!std::isfinite(w.weights[i]) || w.weights[i] < 0.0f || w.weights[i] > MAX_LABEL_WEIGHT) {
            std::ostringstream msg;
            msg << what << ": label weight " << w.weights[i] << " at position " << i << " is outside [0, "
                << MAX_LABEL_WEIGHT << "]\nfix: pass finite label weights in that range";
            throw Error(msg.str());
        }
    }
    for (size_t i = 0; i < w.tokens.size(); ++i) {
        if (w.tokens[i] < 0 || w.tokens[i] >= n_vocab || w.labels[i] < -1 || w.labels[i] >= n_vocab) {
            throw Error(std::string(what) + ": token or label id at position " + std::to_string(i) +
                        " is outside the model's vocabulary of " + std::to_string(n_vocab) +
                        " (was the dataset tokenized with another model?)");
        }
    }
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The settings train() refuses before it loads anything. The optimizer's are those ggml-opt asserts
// on (GGML_ASSERT(alpha > 0), wd in [0, 1], ...), checked as the float32 values it will see: a
// double lr of 1e-300 or 1e39 passes `> 0` but is 0 or inf here.
void check_options(const TrainOptions & o) {
    if (o.n_ctx <= 0 || o.n_ctx % 256 != 0 || o.epochs <= 0) {
        // llama.cpp pads every context to a multiple of 256, and a training window must fill
        // the whole context for K and V to receive gradients
        throw Error("n_ctx must be a positive multiple of 256 and epochs positive (got n_ctx=" +
                    std::to_string(o.n_ctx) + ", epochs=" + std::to_string(o.epochs) + ")");
    }
    if (o.method != "full" && o.method != "lora") {
        throw Error("unknown training method '" + o.method + "' (full, lora)");
    }
    if (o.optimizer != "adamw" && o.optimizer != "sgd") {
        throw Error("unknown optimizer '" + o.optimizer + "' (adamw, sgd)");
    }
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



// Optimizer steps the run takes: epochs x windows / accumulation, capped by max_steps.
int64_t total_steps_of(const TrainOptions & opts, int64_t n_train) {
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
    return total_steps;
}

// The loop of one run: windows into optimizer steps, and when to report, evaluate and checkpoint.
struct Run {
    const TrainOptions & opts;
    Trainer & trainer;
    const Windows & train_set;
    const Windows & val_set;
    const ProgressFn & progress;
    const int64_t total_steps, start_step;
    const int accum;
    const bool has_val;
    const Clock::time_point t0 = Clock::now();
    TrainResult res;
    Progress p;
    // the windows of the optimizer step in progress
    double step_loss = 0;
    int64_t step_correct = 0, step_labelled = 0, windows_in_step = 0;

    Run(const TrainOptions & o, Trainer & t, const Windows & train, const Windows & val, const ProgressFn & fn,
        int64_t total)
        : opts(o), trainer(t), train_set(train), val_set(val), progress(fn), total_steps(total),
          // resuming replays the same shuffles and skips the windows already trained on, so the run
          // continues where it stopped (the optimizer's moments start afresh)
          start_step(std::clamp<int64_t>(o.start_step, 0, total)), accum(std::max(1, o.grad_accum)),
          has_val(val.count(o.n_ctx) > 0) {
        res.n_trainable = trainer.filter.n_trainable;
        res.matmul_precision = trainer.bf16_matmul ? "bf16" : "f32";
        res.steps = trainer.schedule.step = start_step;
        p.epochs = opts.epochs;
        p.total_steps = total_steps;
    }

    bool done() const { return res.cancelled || res.steps >= total_steps; }

    void report(const char * event) {
        p.event = event;
        p.elapsed_s = seconds_since(t0);
        p.tokens_per_s = res.tokens / std::max(1e-9, p.elapsed_s);
        p.threads = trainer.threads.count();
        const int64_t steps_here = res.steps - start_step;
        p.eta_s = steps_here ? p.elapsed_s / steps_here * (total_steps - res.steps) : 0;
        if (progress && !progress(p)) {
            res.cancelled = true;
        }
    }

    void checkpoint(const std::string & name) {
        fs::create_directories(opts.checkpoint_dir);
        p.checkpoint = (fs::path(opts.checkpoint_dir) / (name + ".gguf")).string();
        trainer.save(p.checkpoint);
        report("checkpoint");
        p.checkpoint.clear();
    }

    void evaluate() {
        std::tie(p.val_loss, p.val_accuracy) = trainer.evaluate(val_set, [&](int64_t windows_done, int64_t windows) {
            p.eval_done = windows_done;
            p.eval_total = windows;
            report("eval_progress");
        });
        res.val_loss = p.val_loss;
        if (res.best_val_loss < 0 || p.val_loss < res.best_val_loss) {
            res.best_val_loss = p.val_loss;
        }
        report("eval");
    }

    // One epoch over `order`, after skipping `skip_windows` (a resume) of them.
    void epoch(int number, const std::vector<int64_t> & order, int64_t & skip_windows) {
        p.epoch = number;
        bool trained = false;
        const int64_t n = (int64_t) order.size();
        for (int64_t k = 0; k < n; ++k) {
            if (skip_windows > 0) {
                --skip_windows;
                continue;
            }
            trained = true;
            if (!train_window(order[k], k == n - 1)) {
                break;
            }
        }
        if (!trained || res.cancelled) {
            return;   // an epoch skipped by a resume, or a stop: nothing new to evaluate or save
        }
        if (has_val) {
            evaluate();
        }
        if (!opts.checkpoint_dir.empty()) {
            checkpoint("epoch-" + std::to_string(number));
        }
    }

    // Trains window i; the last window of a step ends the step, then evaluates and checkpoints when
    // due. False when the run stops here.
    bool train_window(int64_t i, bool epoch_end) {
        auto [loss, c, l] = trainer.run(train_set, i, true);
        res.tokens += opts.n_ctx;
        step_loss += loss;
        step_correct += c;
        step_labelled += l;
        if (++windows_in_step < accum) {
            return true;
        }
        end_step();
        if (done()) {
            return false;
        }
        // a mid-epoch evaluation is followed by its checkpoint, so it can be chosen later; the
        // epoch's end is evaluated by epoch() anyway
        const bool eval_now = opts.eval_every > 0 && res.steps % opts.eval_every == 0 && has_val && !epoch_end;
        if (eval_now) {
            evaluate();
        }
        const bool save_now = opts.save_every > 0 && res.steps % opts.save_every == 0;
        if (!opts.checkpoint_dir.empty() && !res.cancelled && (eval_now || save_now)) {
            checkpoint("step-" + std::to_string(res.steps));
        }
        return !res.cancelled;
    }

    // ggml-opt has just applied the optimizer step for these `accum` windows
    void end_step() {
        res.steps = ++trainer.schedule.step;
        p.step = res.steps;
        p.loss = step_loss / windows_in_step;
        p.accuracy = step_labelled ? double(step_correct) / step_labelled : 0;
        res.train_loss = p.loss;
        step_loss = 0;
        step_correct = step_labelled = windows_in_step = 0;
        report("step");
    }
};

} // namespace

TrainResult train(const std::string & base_path, const std::string & out_path,
                  const Windows & train_set, const Windows & val_set,
                  const TrainOptions & opts, const ProgressFn & progress) {
    check_options(opts);
    const int64_t n_train = train_set.count(opts.n_ctx);
    const int64_t total_steps = total_steps_of(opts, n_train);

    Trainer trainer(base_path, opts, total_steps);
    check_windows(train_set, opts.n_ctx, trainer.n_vocab(), "training set");
    check_windows(val_set, opts.n_ctx, trainer.n_vocab(), "validation set");

    Run run(opts, trainer, train_set, val_set, progress, total_steps);
    std::mt19937 rng(opts.seed);
    std::vector<int64_t> order(n_train);
    int64_t skip_windows = run.start_step * run.accum;
    for (int epoch = 1; epoch <= opts.epochs && !run.done(); ++epoch) {
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), rng);
        run.epoch(epoch, order, skip_windows);
    }

    if (!out_path.empty() && !run.res.cancelled) {
        trainer.save(out_path);   // a cancelled run keeps its epoch checkpoints, not a final model
    }
    run.res.seconds = seconds_since(run.t0);
    run.res.tokens_per_s = run.res.tokens / std::max(1e-9, run.res.seconds);
    run.report("done");
    return run.res;
}

} // namespace dnd
