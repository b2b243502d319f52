// Owning handles for llama.cpp and ggml objects: one RAII style for the whole native layer.
// Each is a std::unique_ptr whose deleter calls the library's own free function.
#pragma once

#include "ggml-opt.h"
#include "gguf.h"
#include "llama.h"

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
using GgmlHandle    = std::unique_ptr<ggml_context, Deleter<ggml_free>>;
using GgufHandle    = std::unique_ptr<gguf_context, Deleter<gguf_free>>;
using DatasetHandle = std::unique_ptr<std::remove_pointer_t<ggml_opt_dataset_t>, Deleter<ggml_opt_dataset_free>>;
using ResultHandle  = std::unique_ptr<std::remove_pointer_t<ggml_opt_result_t>, Deleter<ggml_opt_result_free>>;

// A ggml context that allocates its tensors' data (`bytes` in all, tensor overheads included).
inline GgmlHandle ggml_context_of(size_t bytes) {
    return GgmlHandle(ggml_init({bytes, nullptr, false}));
}

// llama_batch is a struct of arrays by value: owned here, freed once.
class Batch {
public:
    explicit Batch(int n_tokens) : batch_(llama_batch_init(n_tokens, 0, 1)) {}
    ~Batch() { llama_batch_free(batch_); }
    Batch(const Batch &) = delete;
    Batch & operator=(const Batch &) = delete;
    llama_batch & get() { return batch_; }

private:
    llama_batch batch_;
};

} // namespace dnd
