// LoRA adapters: a fresh trainable adapter, loading one, saving it as a GGUF LoRA and merging it
// into its base (export-lora). evaluate.cpp's evaluate and logits run a model with or without one.
#include "native.h"

#include "gguf.h"
#include "llama.h"
#include "llama-adapter.h"   // ab_map: the adapter's A/B tensors are what training updates
#include "llama-model.h"     // tensors_by_name: which weights an adapter can cover

#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <regex>

namespace fs = std::filesystem;

namespace dnd {

namespace {

void set_adapter_kv(gguf_context * g, const std::string & arch, float alpha) {
    gguf_set_val_str(g, "general.architecture", arch.c_str());
    gguf_set_val_str(g, "general.type", "adapter");
    gguf_set_val_str(g, "adapter.type", "lora");
    gguf_set_val_f32(g, "adapter.lora.alpha", alpha);
}

std::string arch_of(const llama_model * model) {
    char buf[128] = {};
    llama_model_meta_val_str(model, "general.architecture", buf, sizeof(buf));
    return buf;
}

} // namespace

std::string adapter_path(const std::string & model_path) {
    const std::string ext = ".gguf";
    const bool has_ext = model_path.size() >= ext.size() &&
                         model_path.compare(model_path.size() - ext.size(), ext.size(), ext) == 0;
    return (has_ext ? model_path.substr(0, model_path.size() - ext.size()) : model_path) + ".lora.gguf";
}

void write_new_adapter(const llama_model * model, const std::string & targets, int rank, float alpha,
                       uint32_t seed, const std::string & out_path) {
    if (rank <= 0) {
        throw Error("LoRA rank must be positive (got " + std::to_string(rank) + ")");
    }
    std::regex pattern;
    try {
        pattern = std::regex(targets);
    } catch (const std::regex_error & e) {
        throw Error("LoRA target pattern '" + targets + "' is not a valid regex: " + e.what());
    }
    std::vector<const ggml_tensor *> covered;
    size_t bytes = 0;
    for (const auto & [name, t] : model->tensors_by_name) {
        // 2-D block weights only: norms are vectors, and token_embd's adapter has another layout
        const bool block_weight = name.rfind("blk.", 0) == 0 && name.size() > 7 &&
                                  name.compare(name.size() - 7, 7, ".weight") == 0;
        if (block_weight && ggml_n_dims(t) == 2 && std::regex_search(name, pattern)) {
            covered.push_back(t);
            bytes += (t->ne[0] + t->ne[1]) * rank * sizeof(float) + 2 * ggml_tensor_overhead();
        }
    }
    if (covered.empty()) {
        throw Error("the LoRA target pattern '" + targets + "' matches no block weight of this model");
    }

    GgufHandle out(gguf_init_empty());
    set_adapter_kv(out.get(), arch_of(model), alpha);
    GgmlHandle data = ggml_context_of(bytes + ggml_tensor_overhead());
    std::mt19937 rng(seed);
    for (const ggml_tensor * t : covered) {
        const int64_t n_in = t->ne[0], n_out = t->ne[1];
        ggml_tensor * a = ggml_new_tensor_2d(data.get(), GGML_TYPE_F32, n_in, rank);
        ggml_tensor * b = ggml_new_tensor_2d(data.get(), GGML_TYPE_F32, rank, n_out);
        ggml_format_name(a, "%s.lora_a", t->name);
        ggml_format_name(b, "%s.lora_b", t->name);
        std::uniform_real_distribution<float> u(-1.0f / std::sqrt(float(n_in)), 1.0f / std::sqrt(float(n_in)));
        for (int64_t i = 0; i < ggml_nelements(a); ++i) {
            static_cast<float *>(a->data)[i] = u(rng);
        }
        memset(b->data, 0, ggml_nbytes(b));
        gguf_add_tensor(out.get(), a);
        gguf_add_tensor(out.get(), b);
    }
    write_gguf(out.get(), out_path);
}

llama_adapter_lora * load_adapter(llama_model * model, const std::string & adapter_file, llama_context * ctx) {
    llama_adapter_lora * adapter = llama_adapter_lora_init(model, adapter_file.c_str());
    if (!adapter) {
        throw Error("could not load the LoRA adapter " + adapter_file + ": " + last_log_error());
    }
    float scale = 1.0f;
    if (ctx && llama_set_adapters_lora(ctx, &adapter, 1, &scale) != 0) {
        throw Error("could not attach the LoRA adapter " + adapter_file + " to the context");
    }
    return adapter;
}

void save_adapter(const llama_adapter_lora * adapter, const std::string & out_path,
                  const std::map<std::string, std::string> & kv) {
    GgufHandle out(gguf_init_empty());
    for (const auto & [key, value] : kv) {
        gguf_set_val_str(out.get(), key.c_str(), value.c_str());
    }
    set_adapter_kv(out.get(), arch_of(adapter->model), adapter->alpha);
    size_t bytes = ggml_tensor_overhead();
    for (const auto & [name, w] : adapter->ab_map) {
        bytes += ggml_nbytes(w.a) + ggml_nbytes(w.b) + 2 * ggml_tensor_overhead();
    }
    GgmlHandle host = ggml_context_of(bytes);
    for (const auto & [name, w] : adapter->ab_map) {
        for (const ggml_tensor * t : {w.a, w.b}) {
            ggml_tensor * copy = ggml_dup_tensor(host.get(), t);   // the adapter may live on a GPU
            ggml_set_name(copy, t->name);
            ggml_backend_tensor_get(t, copy->data, 0, ggml_nbytes(t));
            gguf_add_tensor(out.get(), copy);
        }
    }
    write_gguf(out.get(), out_path);
}

void merge_adapter(const std::string & base_path, const std::string & adapter_file, const std::string & out_path,
                   const std::map<std::string, std::string> & kv) {
    init();
    Model base(base_path, 0, false);
    save_weights(base.get(), Metadata(base_path), out_path, kv, load_adapter(base.get(), adapter_file, nullptr));
}

} // namespace dnd
