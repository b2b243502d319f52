// Loading GGUF models, reading what they are, tokenizing, chat templates and saving.
#include "native.h"

#include "gguf.h"
#include "llama.h"
#include "llama-adapter.h" // ab_map: merging an adapter while saving
#include "llama-model.h"   // tensors_by_name: saving needs every weight under its GGUF name

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#ifdef __linux__
#include <sched.h>
#endif
#ifdef _WIN32
#include <process.h>
#define getpid _getpid
#else
#include <unistd.h>
#endif

namespace fs = std::filesystem;

namespace dnd {

// ---- logging ---------------------------------------------------------------------------------

static std::mutex g_log_mutex;
static std::deque<std::string> g_log_errors;
static const bool g_verbose = std::getenv("DNDLLAMA_VERBOSE") != nullptr;   // echo llama.cpp's whole log

static void log_callback(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        g_log_errors.emplace_back(text);
        while (g_log_errors.size() > 8) {
            g_log_errors.pop_front();
        }
    }
    if (g_verbose || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

void init() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_callback, nullptr);
        llama_backend_init();
    });
}

std::string temp_path(const std::string & path) {
    const fs::path p(path);
    return (p.parent_path() / ("." + p.filename().string() + "." + std::to_string(getpid()) + ".tmp")).string();
}

std::string last_log_error() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    std::string out;
    for (const auto & line : g_log_errors) {
        out += line;
    }
    g_log_errors.clear();
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) {
        out.pop_back();
    }
    return out;
}

namespace {

int allowed_cores() {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        return std::max(1, CPU_COUNT(&set));
    }
#endif
    return (int) std::max(1u, std::thread::hardware_concurrency());
}

// false where /proc is missing
bool cpu_times(CpuTimes & t) {
    std::ifstream stat("/proc/stat");
    std::string cpu;
    long long v[8] = {0};
    if (!(stat >> cpu >> v[0] >> v[1] >> v[2] >> v[3] >> v[4] >> v[5] >> v[6] >> v[7]) || cpu != "cpu") {
        return false;
    }
    t.total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
    t.busy = t.total - v[3] - v[4];   // idle and iowait
    std::ifstream self("/proc/self/stat");
    std::string line;
    std::getline(self, line);
    const size_t end = line.rfind(')');   // the command name may hold spaces
    std::istringstream rest(end == std::string::npos ? "" : line.substr(end + 2));
    std::string field;
    for (int i = 3; i <= 13 && rest >> field; ++i) {
    }
    long long utime = 0, stime = 0;
    if (!(rest >> utime >> stime)) {
        return false;
    }
    t.own = utime + stime;
    return true;
}

// the cores this process may use less those other processes kept busy between two samples; a core
// counts as taken when another process used more than 60% of one
int free_cores(const CpuTimes & a, const CpuTimes & b) {
    if (b.total <= a.total) {
        return allowed_cores();
    }
    const double n_cpus = std::max(1u, std::thread::hardware_concurrency());
    const double others = (double) ((b.busy - a.busy) - (b.own - a.own));
    const double elsewhere = std::max(0.0, others / (double) (b.total - a.total) * n_cpus);
    return std::max(1, allowed_cores() - (int) std::floor(elsewhere + 0.4));
}

} // namespace

int default_threads() {
    // sampled at most every 2 s (the sample costs 150 ms; a replay asks once per call): a value kept
    // longer outlived the start of a competing process, and 2 spinning threads on 1 free core ran a
    // batched replay 4x slower than quiet instead of 1.5x with 1 thread
    static std::mutex mutex;
    static int cached = 0;
    static std::chrono::steady_clock::time_point when;
    std::lock_guard<std::mutex> lock(mutex);
    const auto now = std::chrono::steady_clock::now();
    if (cached == 0 || now - when > std::chrono::seconds(2)) {
        CpuTimes a, b;
        const bool ok = cpu_times(a);
        std::this_thread::sleep_for(std::chrono::milliseconds(150));
        cached = ok && cpu_times(b) ? free_cores(a, b) : allowed_cores();
        when = now;
    }
    return cached;
}

StepThreads::StepThreads(int n_threads, const char * what)
    : automatic(n_threads == 0), current(resolve_threads(n_threads, what)), when(std::chrono::steady_clock::now()) {
    automatic = automatic && cpu_times(last);
}

int StepThreads::next() {
    const auto now = std::chrono::steady_clock::now();
    CpuTimes times;
    // a second at least: /proc/stat counts in 10 ms ticks
    if (automatic && now - when >= std::chrono::seconds(1) && cpu_times(times)) {
        current = free_cores(last, times);
        last = times;
        when = now;
    }
    return current;
}

int resolve_threads(int n_threads, const char * what) {
    if (n_threads < 0 || n_threads > GGML_MAX_N_THREADS) {
        throw Error(std::string(what) + ": " + std::to_string(n_threads) + " threads is out of range"
                    "\nfix: pass 0 (the free cores) up to " + std::to_string(GGML_MAX_N_THREADS));
    }
    return n_threads > 0 ? n_threads : default_threads();
}

// ---- Model -----------------------------------------------------------------------------------

llama_model_params model_params(int n_gpu_layers) {
    llama_model_params params = llama_model_default_params();
    params.n_gpu_layers = n_gpu_layers;
    // No repacked "extra" weight buffers: on CPUs with AMX (Xeon Sapphire Rapids and newer) the
    // AMX matmul of the pinned ggml segfaults on Q8_0/Q4 weights (seen here on a tiny model;
    // upstream ggml-org/llama.cpp#20824). Training uses F32 weights, which AMX never handles, so
    // this only costs quantized inference some speed on those CPUs.
    params.use_extra_bufts = false;
    return params;
}

Model::Model(const std::string & path, int n_gpu_layers, bool vocab_only) : path_(path), vocab_only_(vocab_only) {
    init();
    if (!fs::exists(path)) {
        throw Error("model file not found: " + path);
    }
    last_log_error();
    llama_model_params params = model_params(n_gpu_layers);
    params.vocab_only = vocab_only;
    model_.reset(llama_model_load_from_file(path.c_str(), params));
    if (!model_) {
        throw Error("could not load " + path + " as a GGUF model: " + last_log_error() +
                    "\nfix: pass a GGUF file written by llama.cpp (convert Hugging Face checkpoints first)");
    }
}

static std::string meta_value(const llama_model * model, const char * key) {
    char buf[256];
    int32_t n = llama_model_meta_val_str(model, key, buf, sizeof(buf));
    if (n < 0) {
        return "";
    }
    if ((size_t) n >= sizeof(buf)) {
        std::string big(n + 1, '\0');
        llama_model_meta_val_str(model, key, big.data(), big.size());
        big.resize(n);
        return big;
    }
    return std::string(buf, n);
}

ModelInfo Model::info() const {
    const llama_model * model = model_.get();
    ModelInfo info;
    info.arch = meta_value(model, "general.architecture");
    info.name = meta_value(model, "general.name");
    info.n_params = llama_model_n_params(model);
    info.size_bytes = llama_model_size(model);
    info.n_ctx_train = llama_model_n_ctx_train(model);
    info.n_embd = llama_model_n_embd(model);
    info.n_layer = llama_model_n_layer(model);
    // a vocab-only load has no layers, and llama.cpp aborts when asked for layer 0's heads
    info.n_head = info.n_layer > 0 ? llama_model_n_head(model) : 0;
    info.n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    const char * tmpl = llama_model_chat_template(model, nullptr);
    info.chat_template = tmpl ? tmpl : "";

    const int32_t n_meta = llama_model_meta_count(model);
    for (int32_t i = 0; i < n_meta; ++i) {
        char key[256];
        if (llama_model_meta_key_by_index(model, i, key, sizeof(key)) < 0) {
            continue;
        }
        info.metadata[key] = meta_value(model, key);
    }
    // a vocab-only load reads no hyperparameters: take them from the metadata instead
    auto from_meta = [&](int & field, const std::string & suffix) {
        auto it = info.metadata.find(info.arch + suffix);
        if (field == 0 && it != info.metadata.end()) {
            field = std::atoi(it->second.c_str());
        }
    };
    from_meta(info.n_ctx_train, ".context_length");
    from_meta(info.n_embd, ".embedding_length");
    from_meta(info.n_layer, ".block_count");
    from_meta(info.n_head, ".attention.head_count");

    // tensor types come from the file itself: the loaded model may have repacked them
    gguf_init_params gparams = {/*no_alloc =*/ true, /*ctx =*/ nullptr};
    if (GgufHandle gguf{gguf_init_from_file(path_.c_str(), gparams)}) {
        for (int64_t i = 0; i < gguf_get_n_tensors(gguf.get()); ++i) {
            info.tensor_types[ggml_type_name(gguf_get_tensor_type(gguf.get(), i))] += 1;
        }
    }
    return info;
}

std::vector<int32_t> Model::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    const llama_vocab * vocab = llama_model_get_vocab(model_.get());
    std::vector<int32_t> tokens(text.size() + 8);
    int32_t n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), tokens.data(),
                               (int32_t) tokens.size(), add_special, parse_special);
    if (n < 0) {
        tokens.resize(-n);
        n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), tokens.data(),
                           (int32_t) tokens.size(), add_special, parse_special);
    }
    if (n < 0) {
        throw Error("tokenization failed for a text of " + std::to_string(text.size()) + " bytes");
    }
    tokens.resize(n);
    return tokens;
}

std::string Model::detokenize(const std::vector<int32_t> & tokens, bool render_special) const {
    const llama_vocab * vocab = llama_model_get_vocab(model_.get());
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    for (int32_t t : tokens) {
        if (t < 0 || t >= n_vocab) {
            throw Error("token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                        std::to_string(n_vocab - 1) + ")");
        }
    }
    std::string text(tokens.size() * 8 + 16, '\0');
    int32_t n = llama_detokenize(vocab, tokens.data(), (int32_t) tokens.size(), text.data(),
                                 (int32_t) text.size(), false, render_special);
    if (n < 0) {
        text.resize(-n);
        n = llama_detokenize(vocab, tokens.data(), (int32_t) tokens.size(), text.data(),
                             (int32_t) text.size(), false, render_special);
    }
    text.resize(std::max(n, 0));
    return text;
}

std::string Model::apply_chat_template(const std::vector<Message> & messages, bool add_assistant,
                                       const std::string & tmpl) const {
    const char * t = tmpl.empty() ? llama_model_chat_template(model_.get(), nullptr) : tmpl.c_str();
    if (!t) {
        throw Error(path_ + " has no tokenizer.chat_template; pass a template explicitly");
    }
    std::vector<llama_chat_message> chat;
    for (const auto & m : messages) {
        chat.push_back({m.role.c_str(), m.content.c_str()});
    }
    size_t total = 256;
    for (const auto & m : messages) {
        total += m.content.size() * 2 + 64;
    }
    std::string out(total, '\0');
    int32_t n = llama_chat_apply_template(t, chat.data(), chat.size(), add_assistant, out.data(), (int32_t) out.size());
    if (n > (int32_t) out.size()) {
        out.resize(n);
        n = llama_chat_apply_template(t, chat.data(), chat.size(), add_assistant, out.data(), (int32_t) out.size());
    }
    if (n < 0) {
        throw Error("llama.cpp does not recognise this chat template (it supports a fixed list of "
                    "well-known templates, e.g. gemma, chatml, llama3)");
    }
    out.resize(n);
    return out;
}

// ---- saving ----------------------------------------------------------------------------------

Metadata::Metadata(const std::string & path) {
    gguf_init_params gparams = {/*no_alloc =*/ true, /*ctx =*/ nullptr};
    ctx_.reset(gguf_init_from_file(path.c_str(), gparams));
    if (!ctx_) {
        throw Error("could not read the metadata of " + path);
    }
}

void write_gguf(gguf_context * out, const std::string & out_path) {
    const std::string tmp = temp_path(out_path);
    if (!gguf_write_to_file(out, tmp.c_str(), false)) {
        std::error_code ec;
        fs::remove(tmp, ec);
        throw Error("could not write " + tmp + " (disk full or not writable?): " + last_log_error());
    }
    fs::rename(tmp, out_path);
}

namespace {

// W + scale * B A as F32 into `dst` (W of any type: dequantized first). B A costs n_out * n_in * rank
// multiply-adds, a few GFLOP for a whole small model, so plain loops are enough.
void merge_into(const ggml_tensor * w, const llama_adapter_lora_weight & ab, float scale, ggml_tensor * dst) {
    const int64_t n_in = w->ne[0], n_out = ggml_nrows(w), rank = ab.a->ne[1];
    std::vector<uint8_t> raw(ggml_nbytes(w));
    ggml_backend_tensor_get(w, raw.data(), 0, raw.size());
    float * out = static_cast<float *>(dst->data);
    if (w->type == GGML_TYPE_F32) {
        memcpy(out, raw.data(), raw.size());
    } else {
        ggml_get_type_traits(w->type)->to_float(raw.data(), out, n_in * n_out);
    }
    std::vector<float> a(ggml_nelements(ab.a)), b(ggml_nelements(ab.b));
    ggml_backend_tensor_get(ab.a, a.data(), 0, a.size() * sizeof(float));
    ggml_backend_tensor_get(ab.b, b.data(), 0, b.size() * sizeof(float));
    for (int64_t o = 0; o < n_out; ++o) {
        float * row = out + o * n_in;
        for (int64_t k = 0; k < rank; ++k) {
            const float bk = scale * b[o * rank + k];
            const float * ak = a.data() + k * n_in;
            for (int64_t i = 0; i < n_in; ++i) {
                row[i] += bk * ak[i];
            }
        }
    }
}

} // namespace

void save_weights(llama_model * model, const Metadata & meta, const std::string & out_path,
                  const std::map<std::string, std::string> & kv, const llama_adapter_lora * merge) {
    GgufHandle out(gguf_init_empty());
    gguf_set_kv(out.get(), meta.get());
    for (const auto & [key, value] : kv) {
        gguf_set_val_str(out.get(), key.c_str(), value.c_str());
    }
    auto lora_of = [&](const std::string & name) -> const llama_adapter_lora_weight * {
        if (!merge) {
            return nullptr;
        }
        auto it = merge->ab_map.find(name);
        return it == merge->ab_map.end() ? nullptr : &it->second;
    };

    // weights off the host (GPU) and merged weights are built in a host context first; gguf writes
    // from ->data
    const auto & tensors = model->tensors_by_name;
    size_t host_bytes = 0;
    for (const auto & [name, t] : tensors) {
        if (lora_of(name)) {
            host_bytes += ggml_nelements(t) * sizeof(float) + ggml_tensor_overhead();
        } else if (t->buffer && !ggml_backend_buffer_is_host(t->buffer)) {
            host_bytes += ggml_nbytes(t) + ggml_tensor_overhead();
        }
    }
    GgmlHandle host = ggml_context_of(host_bytes + ggml_tensor_overhead() * (tensors.size() + 1));
    std::set<std::string> written;
    for (const auto & [name, t] : tensors) {
        // gemma3n creates its tied output before token_embd, so llama.cpp holds two copies of
        // token_embd.weight (never trained, so equal): write it once
        if (!written.insert(name).second) {
            continue;
        }
        ggml_tensor * src = t;
        if (const auto * ab = lora_of(name)) {
            src = ggml_new_tensor(host.get(), GGML_TYPE_F32, GGML_MAX_DIMS, t->ne);
            ggml_set_name(src, t->name);
            merge_into(t, *ab, ab->get_scale(merge->alpha, 1.0f), src);
        } else if (t->buffer && !ggml_backend_buffer_is_host(t->buffer)) {
            src = ggml_dup_tensor(host.get(), t);
            ggml_set_name(src, t->name);
            ggml_backend_tensor_get(t, src->data, 0, ggml_nbytes(t));
        }
        gguf_add_tensor(out.get(), src);
    }
    write_gguf(out.get(), out_path);
}

} // namespace dnd
