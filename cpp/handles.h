// Owning handles for llama.cpp and ggml objects: one RAII style for the whole native layer. Each is
// a std::unique_ptr whose deleter calls the library's own free function, so every object is freed
// exactly once, on every path out of a scope, errors included.
#pragma once

#include "ggml-opt.h"
#include "gguf.h"
#include "llama.h"

#include <cstdint>
#include <memory>
#include <type_traits>

namespace dnd {

template <auto Free>
struct Deleter {
    template <typename T>
    void operator()(T * p) const { Free(p); }
};

using ModelHandle   = std::unique_ptr<llama_model, Deleter<llama_model_free>>;
using ContextHandle = std::unique_ptr<llama_context, Deleter<llama_free>>;
using SamplerHandle = std::unique_ptr<llama_sampler, Deleter<llama_sampler_free>>;
using GgmlHandle    = std::unique_ptr<ggml_context, Deleter<ggml_free>>;
using GgufHandle    = std::unique_ptr<gguf_context, Deleter<gguf_free>>;
using DatasetHandle = std::unique_ptr<std::remove_pointer_t<ggml_opt_dataset_t>, Deleter<ggml_opt_dataset_free>>;
using ResultHandle  = std::unique_ptr<std::remove_pointer_t<ggml_opt_result_t>, Deleter<ggml_opt_result_free>>;

// A ggml context that allocates its tensors' data (`bytes` in all, tensor overheads included).
inline GgmlHandle ggml_context_of(size_t bytes) {
    return GgmlHandle(ggml_init({bytes, nullptr, false}));
}

// llama_batch is a struct of arrays held by value, not a pointer: owned here, freed once. `add`
// appends one token of one sequence and returns its index in the batch (where its logits land).
struct Batch {
    llama_batch b;
    explicit Batch(int n, int n_seq = 1) : b(llama_batch_init(n, 0, n_seq)) {}
    ~Batch() { llama_batch_free(b); }
    Batch(const Batch &) = delete;
    Batch & operator=(const Batch &) = delete;
    void clear() { b.n_tokens = 0; }
    int add(int32_t token, int pos, int seq, bool logits) {
        const int i = b.n_tokens++;
        b.token[i] = token;
        b.pos[i] = pos;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = seq;
        b.logits[i] = logits;
        return i;
    }
};

} // namespace dnd
