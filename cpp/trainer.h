// One training run's state, shared by train.cpp (the loop) and trainer.cpp (the setup and one
// window's forward/backward pass). Private to those two files: bindings.cpp sees only native.h.
#pragma once

#include "native.h"

#include <functional>
#include <regex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace dnd {

// The learning rate of each optimizer step; ggml-opt asks for it (optimizer_params) at every step.
struct Schedule {
    const TrainOptions * opts;
    int64_t total_steps;
    int64_t step = 0;   // optimizer steps taken so far

    float lr() const;   // linear warm-up, then cosine decay to lr * lr_min_ratio
};

// Which model tensors train: those matching `pattern` (every one when `all`, none for LoRA).
struct ParamFilter {
    std::regex pattern;
    bool all = true;
    bool none = false;   // LoRA: the whole base is frozen
    uint64_t n_trainable = 0;
};

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
    StepThreads threads;   // chosen again between steps when the free cores were asked for

    // Loads the base, attaches the LoRA adapter (method "lora") and sets ggml-opt up.
    Trainer(const std::string & base, const TrainOptions & o, int64_t total_steps);

    int n_vocab() const;

    // Runs window i of `w` forward (and backward + maybe an optimizer step when training).
    // Returns {loss over labelled positions, correct predictions, labelled positions}.
    std::tuple<double, int64_t, int64_t> run(const Windows & w, int64_t i, bool train);

    // Loss and accuracy over every window of `w`; `progress(done, total)` at a coarse grain (about
    // every tenth of a long evaluation), so a validation set of hundreds of windows is never silent.
    std::pair<double, double> evaluate(const Windows & w, const std::function<void(int64_t, int64_t)> & progress);

    // The model at `path`; LoRA: the adapter next to the merged model, so either can ship.
    void save(const std::string & path);

private:
    void load();             // the base (writable weights for full training) and a training context
    void attach_adapter();   // lora_init, or a fresh adapter
    void init_optimizer();   // the trainable tensors and the optimizer's settings, through llama_opt_init
};

} // namespace dnd
