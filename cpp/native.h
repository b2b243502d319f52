// The plain C++ API of dndllama's native core. bindings.cpp only converts types and calls in here.
#pragma once

#include "handles.h"   // the owning handles (and llama.h, ggml-opt.h, gguf.h)

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace dnd {

// Every failure the caller can act on; bindings turn it into a Python exception.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Initialises llama.cpp once and routes its log: errors are kept so exceptions can quote them.
void init();
std::string last_log_error();   // the most recent error lines llama.cpp logged, for exception text
// where a file is written before its rename into place: .<name>.<pid>.tmp beside it, so two runs
// writing the same file (one shared cache) never write into one temporary
std::string temp_path(const std::string & path);

// ---- model.cpp -------------------------------------------------------------------------------

// Load parameters every model load uses (see model.cpp for why extra buffer types are off).
llama_model_params model_params(int n_gpu_layers);

struct ModelInfo {
    std::string arch, name;
    uint64_t n_params = 0, size_bytes = 0;
    int n_ctx_train = 0, n_embd = 0, n_layer = 0, n_head = 0, n_vocab = 0;
    std::string chat_template;                       // empty when the GGUF has none
    std::map<std::string, std::string> metadata;     // every GGUF key as llama.cpp renders it
    std::map<std::string, int> tensor_types;         // type name -> number of tensors
};

struct Message {
    std::string role, content;
};

class Session;
struct SessionOptions;

class Model {
public:
    Model(const std::string & path, int n_gpu_layers, bool vocab_only);
    Model(const Model &) = delete;              // the session refers to its model: never copied or moved
    Model & operator=(const Model &) = delete;

    llama_model * get() const { return model_.get(); }
    const std::string & path() const { return path_; }
    bool vocab_only() const { return vocab_only_; }

    ModelInfo info() const;
    std::vector<int32_t> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    std::string detokenize(const std::vector<int32_t> & tokens, bool render_special) const;
    // llama.cpp's own template code (the one runtimes use); `tmpl` empty = the GGUF's template
    std::string apply_chat_template(const std::vector<Message> & messages, bool add_assistant,
                                    const std::string & tmpl) const;
    // The model's one inference context (session.cpp), kept across calls; made anew only when
    // `opts` differ from the current one's. Freed before the model.
    Session & session(const SessionOptions & opts) const;
    int cached_tokens() const;   // what the session keeps for the next generate() (0 without one)

private:
    std::string path_;
    ModelHandle model_;
    bool vocab_only_ = false;
    // declared after model_, so destroyed before it: the session's context refers to the model
    mutable std::unique_ptr<Session> session_;
};

// The metadata of a GGUF file, read once: the file may be gone by the time a copy is saved
// (a resumed run's checkpoint is pruned while training goes on).
class Metadata {
public:
    explicit Metadata(const std::string & path);
    const gguf_context * get() const { return ctx_.get(); }

private:
    GgufHandle ctx_;
};

// Writes `model`'s current weights as a GGUF at `out_path` (atomically: temp file, then rename),
// with the metadata `meta` (of the GGUF it was loaded from) plus `kv` (string values) on top.
// With `merge`, every tensor the adapter covers is written as F32 W + scale * B A.
void save_weights(llama_model * model, const Metadata & meta, const std::string & out_path,
                  const std::map<std::string, std::string> & kv, const llama_adapter_lora * merge = nullptr);

// Writes a GGUF atomically (temp file, then rename); a full disk names the file and the cause.
void write_gguf(gguf_context * out, const std::string & out_path);

// ---- lora.cpp --------------------------------------------------------------------------------

// Where the adapter of a LoRA-trained model file lives: "x.gguf" -> "x.lora.gguf".
std::string adapter_path(const std::string & model_path);

// Writes a fresh adapter for every 2-D block weight of `model` whose name matches `targets`: A
// uniform in +-1/sqrt(n_in) (seeded), B zero, so training starts from the base model's outputs exactly.
void write_new_adapter(const llama_model * model, const std::string & targets, int rank, float alpha,
                       uint32_t seed, const std::string & out_path);

// Loads a GGUF LoRA onto `model` (freed with it) and, with `ctx`, makes it the context's adapter.
llama_adapter_lora * load_adapter(llama_model * model, const std::string & adapter_file, llama_context * ctx);

// Writes the adapter as a GGUF LoRA that llama_adapter_lora_init and `--lora` load (atomically).
void save_adapter(const llama_adapter_lora * adapter, const std::string & out_path,
                  const std::map<std::string, std::string> & kv);

// The export-lora step: base + adapter merged into one GGUF at `out_path`.
void merge_adapter(const std::string & base_path, const std::string & adapter_file, const std::string & out_path,
                   const std::map<std::string, std::string> & kv);

// ---- train.cpp (the loop) and trainer.cpp (one run's model, context and optimizer) -------

struct TrainOptions {
    int n_ctx = 256;
    int epochs = 1;
    int64_t max_steps = -1;            // optimizer steps; -1 = epochs decide
    float lr = 1e-4f;
    float lr_min_ratio = 0.1f;         // cosine decay from lr to lr*lr_min_ratio
    int64_t warmup_steps = 0;
    float weight_decay = 0.01f;
    float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
    std::string optimizer = "adamw";   // or "sgd" (w = w * (1 - lr * weight_decay) - lr * grad):
                                       // one SGD step with weight_decay 0 exposes the gradient
    int grad_accum = 1;                // windows per optimizer step
    std::string trainable = "";        // regex over tensor names; empty = every trainable tensor
    std::string method = "full";       // "full" or "lora" (base frozen, only adapter A/B train)
    int lora_rank = 16;
    float lora_alpha = 32.0f;          // the adapter's output is scaled by alpha / rank
    std::string lora_targets = "attn_(q|k|v|output)|ffn_(gate|up|down)";   // regex over block weights
    std::string lora_init;             // adapter to start from (resume); "" = a fresh one
    int n_threads = 0;                 // 0 = the free cores (StepThreads)
    int n_gpu_layers = 0;
    // training's weight products on the CPU: "f32", "bf16" (BF16 operands, F32 accumulation, on
    // AMX or AVX512-BF16; like PyTorch's float32 matmul precision "medium") or "auto" (bf16 where
    // either is)
    std::string matmul_precision = "f32";
    uint32_t seed = 42;                // window order per epoch
    std::string checkpoint_dir;        // "" = no checkpoints
    int64_t save_every = 0;            // also checkpoint every N optimizer steps (0 = per epoch only)
    int64_t eval_every = 0;            // also evaluate (then checkpoint) every N steps (0 = per epoch only)
    int64_t start_step = 0;            // resume: skip the windows of the first N steps (same seed)
    std::map<std::string, std::string> kv;   // metadata written into every saved GGUF
};

struct Progress {
    std::string event;                 // "step", "eval", "checkpoint", "done"; "eval_progress" during a long eval
    int epoch = 0, epochs = 0;
    int64_t step = 0, total_steps = 0;
    double loss = 0, accuracy = 0, val_loss = -1, val_accuracy = -1;
    double tokens_per_s = 0, eta_s = 0, elapsed_s = 0;
    int threads = 0;                   // CPU threads the last step computed with
    std::string checkpoint;
    int64_t eval_done = 0, eval_total = 0;   // eval_progress: validation windows done, of
};

struct TrainResult {
    int64_t steps = 0, tokens = 0;
    uint64_t n_trainable = 0;
    double train_loss = 0, val_loss = -1, best_val_loss = -1, seconds = 0, tokens_per_s = 0;
    std::string matmul_precision;      // what training's products used: "f32" or "bf16"
    bool cancelled = false;
};

// Windows are rows of `n_ctx` tokens; labels[i] is the token to predict after tokens[i] or -1 (masked).
// A label weighs at most this much: far beyond any useful emphasis, well inside float32's range.
constexpr float MAX_LABEL_WEIGHT = 1000.0f;

struct Windows {
    std::vector<int32_t> tokens, labels;
    std::vector<float> weights;   // one per label (the loss weight of a training label); empty: all 1
    int64_t count(int n_ctx) const { return (int64_t) tokens.size() / n_ctx; }
};

// Throws unless `w` is whole windows of n_ctx tokens with ids inside a vocabulary of n_vocab
// (`what` names the set in the message): never hand ggml an id it would assert on.
void check_windows(const Windows & w, int n_ctx, int n_vocab, const char * what);

// Called after every step and evaluation; returning false stops training cleanly at that point.
using ProgressFn = std::function<bool(const Progress &)>;

// Whether this CPU and build run matmul_precision "bf16" (AMX-BF16 tiles or AVX512-BF16), which
// "auto" then picks.
bool bf16_matmul_supported();

// Whether training's F32 weight products run on packed operands with AVX2 FMAs (patch 0015): false
// where the build lacks AVX2 and FMA or has AVX-512 (which keeps tinyBLAS), or GGML_F32_GEMM=tinyblas
// keeps upstream's tinyBLAS.
bool f32_gemm_supported();

// TrainOptions::matmul_precision as training will run it here: "bf16" or "f32". Throws for an
// unknown value, and for "bf16" where it is not supported.
std::string resolve_matmul_precision(const std::string & precision);

TrainResult train(const std::string & base_path, const std::string & out_path,
                  const Windows & train_set, const Windows & val_set,
                  const TrainOptions & opts, const ProgressFn & progress);

// ---- evaluate.cpp ----------------------------------------------------------------------------

// Loss and accuracy of a model (with an optional LoRA adapter) on windows, without training.
std::pair<double, double> evaluate(const std::string & model_path, const Windows & windows,
                                   int n_ctx, int n_threads, int n_gpu_layers, const std::string & adapter_file = "");

// Logits of every position of `tokens` (row-major, n_tokens x n_vocab), with an optional adapter.
std::vector<float> logits(const std::string & model_path, const std::vector<int32_t> & tokens,
                          const std::string & adapter_file, int n_threads);

// A context over `model` for scoring token sequences (evaluate, logits, divergence): n_ctx cells,
// n_batch tokens per decode, training's numerics (F32 K/V, no flash attention) when
// `training_numerics`, and the LoRA `adapter_file` attached unless it is "". `what` names the caller
// in errors (and in the thread-count check).
ContextHandle open_scoring_context(const Model & model, int n_ctx, int n_batch, int n_threads, bool training_numerics,
                                   const std::string & adapter_file, const char * what);

// Decodes tokens[0, n) as positions first_pos.. of sequence 0, with logits where wants_logits(i).
void decode_tokens(llama_context * ctx, const int32_t * tokens, int n, int first_pos,
                   const std::function<bool(int)> & wants_logits, const char * what);

// ---- gradcheck.cpp ---------------------------------------------------------------------------

// Value and gradients of sum(op(inputs) * weights) for a single ggml op, through ggml's own
// backward pass: the raw material for finite-difference checks of backward implementations.
// An unknown op's error lists the ops there are.
std::pair<double, std::vector<std::vector<float>>> op_gradients(
    const std::string & op, const std::vector<std::vector<float>> & inputs,
    const std::vector<int64_t> & shape, const std::vector<float> & weights);

// ---- quantize.cpp ----------------------------------------------------------------------------

struct QuantizeResult {
    uint64_t in_bytes = 0, out_bytes = 0;
    std::string type;
};

std::vector<std::string> quant_types();
// `token_embedding_type` ("" = as `type`): token_embd's own type, e.g. kept quantized in an F32
// training copy, where it is frozen
QuantizeResult quantize(const std::string & in_path, const std::string & out_path,
                        const std::string & type, int n_threads, const std::string & token_embedding_type = "");

// ---- generate.cpp ----------------------------------------------------------------------------

struct GenerateOptions {
    int n_ctx = 2048;
    int max_tokens = 128;
    float temperature = 0.7f;
    int top_k = 40;
    float top_p = 0.95f;
    uint32_t seed = 42;
    int n_threads = 0;
    std::vector<std::string> stop;
    std::string grammar;                // GBNF with a `root` rule; "" = unconstrained
    int max_repeats = 0;                // > 0: stop ("loop") once a span is written more often (repeats_a_span)
};

struct GenerateResult {
    std::string text;
    std::string stop_reason;            // "eos", "stop", "length", "loop", "grammar" (the grammar allows no token)
    int n_prompt = 0, n_generated = 0;
    double prompt_tokens_per_s = 0, gen_tokens_per_s = 0;
    std::vector<int32_t> tokens;        // the generated tokens (the stopping one excluded)
};

// `prompt` is the full text (already chat-templated when chatting); special tokens are parsed.
// A fresh context per call: the reference the Session's results are checked against.
GenerateResult generate(const Model & model, const std::string & prompt, const GenerateOptions & opts);

// The sampler chain of `opts` (grammar first when one is given); throws for a grammar that does not parse.
SamplerHandle new_sampler(const llama_vocab * vocab, const GenerateOptions & opts);
// One token from the logits at batch position `idx` (-1 = the last); -1 when the grammar rules out
// every token. Accepts it into the chain (grammar state).
int32_t sample_token(llama_sampler * chain, llama_context * ctx, int idx);
// Sampling settings llama.cpp's samplers do not check themselves; throws Error naming the setting.
void check_generate_options(const GenerateOptions & opts);
// Takes a sampled token (-1: the grammar allowed none) into `res`: text, tokens, count. False when
// the generation ends there (stop_reason "grammar", "eos", "stop" or "loop"); max_tokens is the caller's.
bool take_token(GenerateResult & res, const llama_vocab * vocab, int32_t tok, const GenerateOptions & opts);
// Does `text` write one span more than `limit` times? A span is a call (`[...]`, no bracket inside) or
// prose up to `.`, `!`, `?` or a newline, of kMinSentence code points or more, ASCII space stripped:
// Python's replay.end_at_loop (LOOP_SPAN), which then cuts the text before that copy.
bool repeats_a_span(const std::string & text, int limit);
// the earliest stop string in `text`, or npos
size_t find_stop(const std::string & text, const std::vector<std::string> & stops);

// Threads for inference and training: the cores this process may use (its CPU affinity) minus
// those other processes keep busy right now (sampled from /proc/stat), at least 1. On a busy
// machine fewer threads than cores is faster: ggml's threads wait for each other at every op,
// so one thread descheduled by another process stalls them all.
int default_threads();
// CPU time so far, in /proc/stat ticks: busy and total of all CPUs, and this process's own
struct CpuTimes {
    long long busy = 0, total = 0, own = 0;
};

// A training run's thread count. Where the caller asked for the free cores (0) it is chosen again
// between steps from the CPU time other processes used during the last ones (no pause to sample),
// so training yields a core to work started after it, and takes it back when that work ends.
class StepThreads {
  public:
    StepThreads(int n_threads, const char * what);
    int next();   // the count for the coming step
    int count() const { return current; }   // the count of the last step

  private:
    bool automatic;    // the free cores asked for, and /proc/stat readable
    int current;
    CpuTimes last;
    std::chrono::steady_clock::time_point when;
};

// A thread count from a caller: 0 = the free cores (default_threads); negative or more than ggml
// can start (GGML_MAX_N_THREADS) throws, naming `what`, instead of reaching ggml's threadpool with it.
int resolve_threads(int n_threads, const char * what);

// ---- session.cpp -----------------------------------------------------------------------------

struct SessionOptions {
    int n_ctx = 2048;          // KV cells shared by every sequence (shared prefixes are stored once)
    int n_parallel = 1;        // generations decoded together, one token each per batch
    int n_threads = 0;         // 0 = default_threads()
    int n_batch = 512;         // tokens per decode call
    bool operator==(const SessionOptions & o) const {
        return n_ctx == o.n_ctx && n_parallel == o.n_parallel && n_threads == o.n_threads && n_batch == o.n_batch;
    }
};

// One generation of a replay: `prompt` (tokens, BOS included) is continued greedily or by `opts`.
// Jobs of one `stream` (a conversation) usually extend each other's prompts: the shared prefix is
// decoded once and each job's generation runs in a copy (fork) of that stream's KV sequence.
struct ReplayJob {
    int stream = 0;
    std::vector<int32_t> prompt;
};

struct ReplayStats {
    int64_t fed_tokens = 0;         // prompt tokens decoded (shared prefixes once)
    int64_t prompt_tokens = 0;      // sum of the jobs' prompt lengths (what one-at-a-time decodes)
    int64_t generated = 0, decodes = 0, max_parallel = 0;
    double seconds = 0, prompt_seconds = 0, gen_seconds = 0;   // decode calls holding prompt tokens count as prompt
};

// (jobs done, jobs in all); returning false stops the replay (Error "cancelled").
using ReplayProgress = std::function<bool(int, int)>;

class Session {
public:
    Session(const Model & model, const SessionOptions & opts);
    Session(const Session &) = delete;
    Session & operator=(const Session &) = delete;

    const SessionOptions & options() const { return opts_; }
    // Generation with the KV cache of the previous call reused up to the first token where
    // `prompt` differs from what is cached (a chat's earlier turns are not decoded again).
    GenerateResult generate(const std::vector<int32_t> & prompt, const GenerateOptions & opts);
    // Every job's generation, up to n_parallel at once (results in job order).
    std::vector<GenerateResult> replay(const std::vector<ReplayJob> & jobs, const GenerateOptions & opts,
                                       const ReplayProgress & progress, ReplayStats * stats);
    // the logits after `tokens` (the cache reused as by generate): how close a greedy choice was
    std::vector<float> next_logits(const std::vector<int32_t> & tokens);
    int n_cached() const { return (int) cached_.size(); }   // tokens kept for generate()
    void clear();

private:
    struct Replay;
    size_t feed(const std::vector<int32_t> & prompt);   // returns the tokens reused from the cache
    void decode(const llama_batch & batch, const char * what);
    void set_threads(int n_threads);

    const Model & model_;
    SessionOptions opts_;
    ContextHandle ctx_;
    std::vector<int32_t> cached_;
    int threads_ = 0;
};

// How many leading tokens `a` and `b` share: what a cached sequence keeps of a new prompt.
size_t common_prefix(const std::vector<int32_t> & a, const std::vector<int32_t> & b);

// ---- divergence.cpp --------------------------------------------------------------------------

// Teacher-forced comparison of candidates (quantized copies) with a reference model over token
// sequences: at every position whose mask is non-zero (the next token is a DM token; 2 = inside a
// tool call), the reference's and each candidate's next-token distributions are compared.
struct Divergence {
    int64_t positions = 0, tool_positions = 0;
    double mean_kl = 0, max_kl = 0, top1_agreement = 0;
    double tool_mean_kl = -1, tool_top1_agreement = -1;   // -1 = no tool-call position
    double reference_nll = 0, candidate_nll = 0;           // mean loss of the actual next tokens
    // mean entropy of the next-token distributions: a copy whose loss beats its source's while its
    // entropy is higher is less confident, not better (an overconfident source loses on its mistakes)
    double reference_entropy = 0, candidate_entropy = 0;
};

std::vector<Divergence> divergence(const Model & reference, const std::vector<const Model *> & candidates,
                                   const std::vector<std::vector<int32_t>> & sequences,
                                   const std::vector<std::vector<uint8_t>> & masks, int n_threads);

} // namespace dnd
