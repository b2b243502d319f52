// Quantization (and dequantization) through llama.cpp's own llama_model_quantize.
#include "native.h"

#include "llama.h"

#include <filesystem>

#include <strings.h>

namespace fs = std::filesystem;

namespace dnd {

namespace {

struct QuantType {
    const char * name;
    llama_ftype ftype;
};

// The names llama-quantize accepts, for the types this product uses or a user may ask for.
const QuantType kQuantTypes[] = {
    {"F32", LLAMA_FTYPE_ALL_F32},       {"F16", LLAMA_FTYPE_MOSTLY_F16},
    {"BF16", LLAMA_FTYPE_MOSTLY_BF16},  {"Q8_0", LLAMA_FTYPE_MOSTLY_Q8_0},
    {"Q6_K", LLAMA_FTYPE_MOSTLY_Q6_K},  {"Q5_K_M", LLAMA_FTYPE_MOSTLY_Q5_K_M},
    {"Q5_K_S", LLAMA_FTYPE_MOSTLY_Q5_K_S}, {"Q5_0", LLAMA_FTYPE_MOSTLY_Q5_0},
    {"Q5_1", LLAMA_FTYPE_MOSTLY_Q5_1},  {"Q4_K_M", LLAMA_FTYPE_MOSTLY_Q4_K_M},
    {"Q4_K_S", LLAMA_FTYPE_MOSTLY_Q4_K_S}, {"Q4_0", LLAMA_FTYPE_MOSTLY_Q4_0},
    {"Q4_1", LLAMA_FTYPE_MOSTLY_Q4_1},  {"IQ4_NL", LLAMA_FTYPE_MOSTLY_IQ4_NL},
    {"IQ4_XS", LLAMA_FTYPE_MOSTLY_IQ4_XS}, {"Q3_K_L", LLAMA_FTYPE_MOSTLY_Q3_K_L},
    {"Q3_K_M", LLAMA_FTYPE_MOSTLY_Q3_K_M}, {"Q3_K_S", LLAMA_FTYPE_MOSTLY_Q3_K_S},
    {"Q2_K", LLAMA_FTYPE_MOSTLY_Q2_K},  {"Q2_K_S", LLAMA_FTYPE_MOSTLY_Q2_K_S},
};

const QuantType & find_type(const std::string & name) {
    std::string upper;
    for (char c : name) {
        upper += (char) toupper((unsigned char) c);
    }
    for (const auto & t : kQuantTypes) {
        if (upper == t.name) {
            return t;
        }
    }
    std::string known;
    for (const auto & t : kQuantTypes) {
        known += std::string(known.empty() ? "" : ", ") + t.name;
    }
    throw Error("unknown quantization type '" + name + "' (known: " + known + ")");
}

} // namespace

std::vector<std::string> quant_types() {
    std::vector<std::string> names;
    for (const auto & t : kQuantTypes) {
        names.emplace_back(t.name);
    }
    return names;
}

ggml_type tensor_type(const std::string & name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char * n = ggml_type_name(ggml_type(t));
        if (n && ggml_get_type_traits(ggml_type(t))->blck_size > 0 && strcasecmp(n, name.c_str()) == 0) {
            return ggml_type(t);
        }
    }
    throw Error("unknown tensor type '" + name + "' (e.g. F32, F16, Q8_0)");
}

QuantizeResult quantize(const std::string & in_path, const std::string & out_path,
                        const std::string & type, int n_threads, const std::string & token_embedding_type) {
    init();
    const QuantType & qt = find_type(type);
    if (!fs::exists(in_path)) {
        throw Error("model file not found: " + in_path);
    }
    llama_model_quantize_params params = llama_model_quantize_default_params();
    params.ftype = qt.ftype;
    params.nthread = resolve_threads(n_threads, "quantize");
    params.allow_requantize = true;   // the embedded base is Q4_K_M; dequantizing it is requantizing
    if (!token_embedding_type.empty()) {
        params.token_embedding_type = tensor_type(token_embedding_type);
    }

    // never leave a half-written model under the final name
    const std::string tmp = temp_path(out_path);
    last_log_error();
    const uint32_t rc = llama_model_quantize(in_path.c_str(), tmp.c_str(), &params);
    if (rc != 0) {
        std::error_code ec;
        fs::remove(tmp, ec);
        throw Error("quantizing " + in_path + " to " + qt.name + " failed: " + last_log_error() +
                    "\nfix: check that the input is a valid GGUF and that the disk has room for the output");
    }
    fs::rename(tmp, out_path);
    return {fs::file_size(in_path), fs::file_size(out_path), qt.name};
}

} // namespace dnd
