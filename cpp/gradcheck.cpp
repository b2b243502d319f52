// Gradient checks of single ggml ops: value and gradients of sum(op(inputs) * weights) through
// ggml's own backward pass, the raw material for finite-difference checks of our backward
// implementations (tests/test_native.py, scripts/native_check.cpp). Not used by training.
#include "native.h"

#include "ggml-cpu.h"   // ggml_graph_compute_with_ctx

#include <algorithm>
#include <cmath>
#include <cstring>

namespace dnd {

namespace {

constexpr int64_t kMaxElements = int64_t(1) << 24;   // per input: a gradient check needs no more

using Inputs = std::vector<ggml_tensor *>;
using Builder = ggml_tensor * (*)(ggml_context *, const Inputs &);

struct OpCase {
    const char * name;
    size_t n_inputs;
    bool last_is_labels;   // the last input is a label tensor: it gets no gradient
    Builder build;
};

ggml_tensor * row_norm(ggml_context * c, ggml_tensor * x) {
    return ggml_sqrt(c, ggml_sum_rows(c, ggml_sqr(c, x)));
}

// Each op with the graph it checks; the comments say which model needs it.
const OpCase OPS[] = {
    {"geglu", 2, false, [](ggml_context * c, const Inputs & in) { return ggml_geglu_split(c, in[0], in[1]); }},
    {"swiglu", 2, false, [](ggml_context * c, const Inputs & in) { return ggml_swiglu_split(c, in[0], in[1]); }},
    {"gelu", 1, false, [](ggml_context * c, const Inputs & in) { return ggml_gelu(c, in[0]); }},
    {"tanh", 1, false, [](ggml_context * c, const Inputs & in) { return ggml_tanh(c, in[0]); }},
    {"concat0", 2, false, [](ggml_context * c, const Inputs & in) { return ggml_concat(c, in[0], in[1], 0); }},
    {"concat1", 2, false, [](ggml_context * c, const Inputs & in) { return ggml_concat(c, in[0], in[1], 1); }},
    // x - mean(x) per row, the core of gemma3n's activation sparsity: MEAN and a broadcast SUB
    {"mean_centered", 1, false, [](ggml_context * c, const Inputs & in) {
        return ggml_sub(c, in[0], ggml_mean(c, in[0]));
    }},
    // a * |b| / |a| per row, gemma3n's AltUp projections: broadcast MUL and DIV of row norms
    {"magnitude_matched", 2, false, [](ggml_context * c, const Inputs & in) {
        return ggml_div(c, ggml_mul(c, in[0], row_norm(c, in[1])), row_norm(c, in[0]));
    }},
    // the gradient reaching SCALE / RMS_NORM is a transposed view (gemma3n's permuted AltUp streams)
    {"transposed_scale", 1, false, [](ggml_context * c, const Inputs & in) {
        return ggml_cont(c, ggml_transpose(c, ggml_scale(c, in[0], 0.5f)));
    }},
    {"transposed_rms_norm", 1, false, [](ggml_context * c, const Inputs & in) {
        return ggml_cont(c, ggml_transpose(c, ggml_rms_norm(c, in[0], 1e-6f)));
    }},
    // x's first gradient is a transposed view, then a second one is added to it
    // (gemma3n: K/V that both their own layer and the KV-sharing layers attend to)
    {"transposed_plus_square", 1, false, [](ggml_context * c, const Inputs & in) {
        ggml_tensor * sq = ggml_sqr(c, in[0]);
        ggml_tensor * t = ggml_cont(c, ggml_transpose(c, in[0]));
        return ggml_add(c, sq, ggml_reshape(c, t, sq));
    }},
    // exactly the loss ggml-opt builds (patched): mean over rows that carry a label
    {"cross_entropy", 2, true, [](ggml_context * c, const Inputs & in) {
        ggml_tensor * ce = ggml_cross_entropy_loss(c, in[0], in[1]);
        ggml_tensor * n_labelled = ggml_clamp(c, ggml_sum(c, in[1]), 1.0f, INFINITY);
        return ggml_scale(c, ggml_div(c, ce, n_labelled), (float) ggml_nrows(in[0]));
    }},
};

const OpCase & find_op(const std::string & op) {
    std::string names;
    for (const OpCase & known : OPS) {
        if (op == known.name) {
            return known;
        }
        names += (names.empty() ? "" : ", ") + std::string(known.name);
    }
    throw Error("unknown op '" + op + "' (" + names + ")");
}

// sum(out * weights) for an output of more than one element; the output itself otherwise.
ggml_tensor * weighted_loss(ggml_context * c, ggml_tensor * out, const std::vector<float> & weights) {
    if (ggml_nelements(out) == 1) {
        return out;
    }
    if ((int64_t) weights.size() != ggml_nelements(out)) {
        throw Error("weights must have one value per output element");
    }
    ggml_tensor * w = ggml_new_tensor_4d(c, GGML_TYPE_F32, out->ne[0], out->ne[1], out->ne[2], out->ne[3]);
    memcpy(w->data, weights.data(), weights.size() * sizeof(float));
    return ggml_sum(c, ggml_mul(c, out, w));
}

} // namespace

std::pair<double, std::vector<std::vector<float>>> op_gradients(
    const std::string & op, const std::vector<std::vector<float>> & inputs,
    const std::vector<int64_t> & shape, const std::vector<float> & weights) {
    init();
    const OpCase & spec = find_op(op);
    if (inputs.size() != spec.n_inputs) {
        throw Error(op + " takes " + std::to_string(spec.n_inputs) + " inputs");
    }
    if (shape.empty() || shape.size() > 4) {
        throw Error("shape must have 1 to 4 dimensions");
    }
    int64_t ne[4] = {1, 1, 1, 1};
    int64_t n = 1;
    for (size_t i = 0; i < shape.size(); ++i) {
        if (shape[i] < 1 || shape[i] > kMaxElements / n) {   // ggml asserts on sizes below 1
            throw Error("shape dimensions must be positive, with at most " + std::to_string(kMaxElements) + " elements in all");
        }
        ne[i] = shape[i];
        n *= shape[i];
    }
    GgmlHandle ctx = ggml_context_of(64 * 1024 * 1024 + 16 * n * sizeof(float) * (inputs.size() + 8));

    Inputs in;
    for (const auto & values : inputs) {
        if ((int64_t) values.size() != n) {
            throw Error("every input must have " + std::to_string(n) + " values");
        }
        ggml_tensor * t = ggml_new_tensor_4d(ctx.get(), GGML_TYPE_F32, ne[0], ne[1], ne[2], ne[3]);
        memcpy(t->data, values.data(), n * sizeof(float));
        in.push_back(t);
    }
    const size_t n_params = in.size() - (spec.last_is_labels ? 1 : 0);
    ggml_tensor * out = spec.build(ctx.get(), in);
    for (size_t i = 0; i < n_params; ++i) {
        ggml_set_param(in[i]);
    }
    ggml_tensor * loss = weighted_loss(ctx.get(), out, weights);
    ggml_set_loss(loss);

    ggml_cgraph * gb = ggml_new_graph_custom(ctx.get(), GGML_DEFAULT_GRAPH_SIZE, true);
    ggml_build_forward_expand(gb, loss);
    ggml_build_backward_expand(ctx.get(), gb, nullptr);
    ggml_graph_reset(gb);
    if (ggml_graph_compute_with_ctx(ctx.get(), gb, 1) != GGML_STATUS_SUCCESS) {
        throw Error("graph computation failed");
    }

    std::vector<std::vector<float>> grads;
    for (size_t i = 0; i < n_params; ++i) {
        const float * d = static_cast<const float *>(ggml_graph_get_grad(gb, in[i])->data);
        grads.emplace_back(d, d + n);
    }
    return {double(*static_cast<const float *>(loss->data)), grads};
}

} // namespace dnd
