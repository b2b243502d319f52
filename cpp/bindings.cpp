// pybind11 bindings: type conversion only. Long calls release the GIL; the training progress
// callback re-acquires it, and a Python exception raised there (Ctrl-C included) stops training
// cleanly at that step and is re-raised once the native side has unwound. Longer than ~400 lines
// only because PYBIND11_MODULE is the declarative table of every name Python sees, with its docs.
#include "native.h"

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;
using namespace dnd;

namespace {

// model output may end inside a multi-byte character or be invalid UTF-8: never fail on it
py::str lenient_str(const std::string & s) {
    return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(s.data(), (Py_ssize_t) s.size(), "replace"));
}

// Python text as UTF-8 for the native side. A str holding lone surrogates (bytes that were not
// UTF-8, decoded with surrogateescape) cannot be, and pybind11 would answer with a TypeError that
// dumps the whole argument: say what it is instead.
std::string utf8_arg(const py::str & text, const char * what) {
    Py_ssize_t size = 0;
    const char * data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
    if (data == nullptr) {
        PyErr_Clear();
        throw Error(std::string(what) + " is not valid UTF-8 text (it holds bytes that are not UTF-8)"
                    "\nfix: save or pipe the text as UTF-8");
    }
    return std::string(data, (size_t) size);
}

// A seed from Python: any int, checked here, since pybind11's uint32_t conversion refuses -1 with a
// dump of every argument
uint32_t seed_arg(int64_t seed) {
    if (seed < 0 || seed > (int64_t) UINT32_MAX) {
        throw Error("seed " + std::to_string(seed) + " is out of range\nfix: pass a seed in [0, 4294967295]");
    }
    return (uint32_t) seed;
}

Windows to_windows(const py::array_t<int32_t, py::array::c_style | py::array::forcecast> & tokens,
                   const py::array_t<int32_t, py::array::c_style | py::array::forcecast> & labels,
                   const char * what) {
    if (tokens.ndim() != 2 || labels.ndim() != 2 || tokens.shape(0) != labels.shape(0) ||
        tokens.shape(1) != labels.shape(1)) {
        throw Error(std::string(what) + ": tokens and labels must be int32 arrays of the same shape "
                    "[windows, n_ctx]");
    }
    Windows w;
    w.tokens.assign(tokens.data(), tokens.data() + tokens.size());
    w.labels.assign(labels.data(), labels.data() + labels.size());
    return w;
}

// the native side marks "no value" with a negative number; Python sees None
py::object optional(double v) {
    return v < 0 ? py::object(py::none()) : py::object(py::float_(v));
}

py::dict progress_dict(const Progress & p) {
    py::dict d;
    d["event"] = p.event;
    d["epoch"] = p.epoch;
    d["epochs"] = p.epochs;
    d["step"] = p.step;
    d["total_steps"] = p.total_steps;
    d["loss"] = p.loss;
    d["accuracy"] = p.accuracy;
    d["val_loss"] = optional(p.val_loss);
    d["val_accuracy"] = optional(p.val_accuracy);
    d["tokens_per_s"] = p.tokens_per_s;
    d["eta_s"] = p.eta_s;
    d["elapsed_s"] = p.elapsed_s;
    d["threads"] = p.threads;
    d["checkpoint"] = p.checkpoint.empty() ? py::object(py::none()) : py::object(py::str(p.checkpoint));
    d["eval_done"] = p.eval_done;
    d["eval_total"] = p.eval_total;
    return d;
}

py::dict train_py(const std::string & base, const std::string & out,
                  py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
                  py::array_t<int32_t, py::array::c_style | py::array::forcecast> labels,
                  py::array_t<int32_t, py::array::c_style | py::array::forcecast> val_tokens,
                  py::array_t<int32_t, py::array::c_style | py::array::forcecast> val_labels,
                  const TrainOptions & opts, py::object callback, py::object label_weights) {
    Windows train_set = to_windows(tokens, labels, "training set");
    if (!label_weights.is_none()) {
        auto weights = label_weights.cast<py::array_t<float, py::array::c_style | py::array::forcecast>>();
        if (weights.ndim() != 2 || weights.shape(0) != labels.shape(0) || weights.shape(1) != labels.shape(1)) {
            throw Error("label_weights must be a float32 array of the labels' shape [windows, n_ctx]");
        }
        train_set.weights.assign(weights.data(), weights.data() + weights.size());
    }
    Windows val_set;
    if (val_tokens.size() > 0) {
        val_set = to_windows(val_tokens, val_labels, "validation set");
    }
    if (tokens.ndim() == 2 && tokens.shape(1) != opts.n_ctx) {
        throw Error("windows have " + std::to_string(tokens.shape(1)) + " tokens but n_ctx is " +
                    std::to_string(opts.n_ctx));
    }

    std::unique_ptr<py::error_already_set> pending;   // a Python exception from the callback
    ProgressFn progress = [&](const Progress & p) {
        if (callback.is_none()) {
            return true;
        }
        py::gil_scoped_acquire gil;
        try {
            if (PyErr_CheckSignals() != 0) {
                throw py::error_already_set();
            }
            py::object keep = callback(progress_dict(p));
            return keep.is_none() || keep.cast<bool>();
        } catch (py::error_already_set & e) {
            pending = std::make_unique<py::error_already_set>(std::move(e));
            return false;
        }
    };

    TrainResult r;
    {
        py::gil_scoped_release release;
        r = train(base, out, train_set, val_set, opts, progress);
    }
    if (pending) {
        pending->restore();
        throw py::error_already_set();
    }
    py::dict d;
    d["steps"] = r.steps;
    d["tokens"] = r.tokens;
    d["n_trainable"] = r.n_trainable;
    d["train_loss"] = r.train_loss;
    d["matmul_precision"] = r.matmul_precision;
    d["val_loss"] = optional(r.val_loss);
    d["best_val_loss"] = optional(r.best_val_loss);
    d["seconds"] = r.seconds;
    d["tokens_per_s"] = r.tokens_per_s;
    d["cancelled"] = r.cancelled;
    return d;
}

py::dict result_dict(const GenerateResult & r) {
    py::dict d;
    d["text"] = lenient_str(r.text);
    d["stop_reason"] = r.stop_reason;
    d["n_prompt"] = r.n_prompt;
    d["n_generated"] = r.n_generated;
    d["prompt_tokens_per_s"] = r.prompt_tokens_per_s;
    d["gen_tokens_per_s"] = r.gen_tokens_per_s;
    d["tokens"] = r.tokens;
    return d;
}

py::dict generate_py(const Model & self, const py::str & text, int max_tokens, float temperature, int top_k,
                     float top_p, int64_t seed, const std::vector<std::string> & stop, int n_ctx, int n_threads,
                     const std::string & grammar, bool fresh_context, int max_repeats) {
    const std::string prompt = utf8_arg(text, "the prompt");
    GenerateOptions o;
    o.max_tokens = max_tokens;
    o.temperature = temperature;
    o.top_k = top_k;
    o.top_p = top_p;
    o.seed = seed_arg(seed);
    o.stop = stop;
    o.n_ctx = n_ctx;
    o.n_threads = n_threads;
    o.grammar = grammar;
    o.max_repeats = max_repeats;
    check_generate_options(o);
    GenerateResult r;
    {
        py::gil_scoped_release release;
        if (fresh_context) {
            r = generate(self, prompt, o);
        } else {
            SessionOptions so;
            so.n_ctx = n_ctx;
            r = self.session(so).generate(self.tokenize(prompt, true, true), o);
        }
    }
    return result_dict(r);
}

py::dict stats_dict(const ReplayStats & st) {
    py::dict d;
    d["fed_tokens"] = st.fed_tokens;
    d["prompt_tokens"] = st.prompt_tokens;
    d["generated"] = st.generated;
    d["decodes"] = st.decodes;
    d["max_parallel"] = st.max_parallel;
    d["seconds"] = st.seconds;
    d["prompt_seconds"] = st.prompt_seconds;
    d["gen_seconds"] = st.gen_seconds;
    return d;
}

py::tuple replay_py(const Model & self, const std::vector<std::vector<int32_t>> & prompts, const std::vector<int> & streams,
                    int max_tokens, const std::vector<std::string> & stop, int n_ctx, int n_parallel, int kv_cells,
                    int n_threads, const std::string & grammar, int max_repeats, py::object callback) {
    if (prompts.size() != streams.size()) {
        throw Error("replay: one stream id per prompt is needed");
    }
    std::vector<ReplayJob> jobs(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
        jobs[i] = {streams[i], prompts[i]};
    }
    GenerateOptions o;
    o.max_tokens = max_tokens;
    o.temperature = 0;
    o.stop = stop;
    o.n_ctx = n_ctx;
    o.n_threads = n_threads;
    o.grammar = grammar;
    o.max_repeats = max_repeats;
    check_generate_options(o);
    if (n_parallel < 1 || n_parallel > 256 || kv_cells < 0) {
        throw Error("replay: n_parallel " + std::to_string(n_parallel) + " or kv_cells " + std::to_string(kv_cells) +
                    " is out of range\nfix: pass n_parallel in [1, 256] and kv_cells >= 0 (0 = automatic)");
    }
    SessionOptions so;
    so.n_parallel = n_parallel;
    so.n_ctx = kv_cells > 0 ? kv_cells : 2 * n_ctx + so.n_parallel * max_tokens;
    std::unique_ptr<py::error_already_set> pending;
    ReplayProgress progress = [&](int done, int total) {
        py::gil_scoped_acquire gil;
        try {
            if (PyErr_CheckSignals() != 0) {
                throw py::error_already_set();
            }
            if (!callback.is_none()) {
                callback(done, total);
            }
            return true;
        } catch (py::error_already_set & e) {
            pending = std::make_unique<py::error_already_set>(std::move(e));
            return false;
        }
    };
    std::vector<GenerateResult> results;
    ReplayStats st;
    try {
        py::gil_scoped_release release;
        results = self.session(so).replay(jobs, o, progress, &st);
    } catch (const Error &) {
        if (!pending) {
            throw;
        }
    }
    if (pending) {
        pending->restore();
        throw py::error_already_set();
    }
    py::list out;
    for (const auto & r : results) {
        out.append(result_dict(r));
    }
    return py::make_tuple(out, stats_dict(st));
}

py::dict divergence_dict(const Divergence & d) {
    py::dict out;
    out["positions"] = d.positions;
    out["tool_positions"] = d.tool_positions;
    out["mean_kl"] = d.mean_kl;
    out["max_kl"] = d.max_kl;
    out["top1_agreement"] = d.top1_agreement;
    out["tool_mean_kl"] = optional(d.tool_mean_kl);
    out["tool_top1_agreement"] = optional(d.tool_top1_agreement);
    out["reference_nll"] = d.reference_nll;
    out["candidate_nll"] = d.candidate_nll;
    out["reference_entropy"] = d.reference_entropy;
    out["candidate_entropy"] = d.candidate_entropy;
    return out;
}

} // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "dndllama's native core: llama.cpp training, quantization and inference";
    init();

    py::register_exception<Error>(m, "NativeError", PyExc_RuntimeError);
    m.attr("build_stamp") = DNDLLAMA_BUILD_STAMP;   // patched llama.cpp + our sources: part of cache keys

    m.def("default_threads", &default_threads);
    m.def("quant_types", &quant_types);

    py::class_<ModelInfo>(m, "ModelInfo")
        .def_readonly("arch", &ModelInfo::arch)
        .def_readonly("name", &ModelInfo::name)
        .def_readonly("n_params", &ModelInfo::n_params)
        .def_readonly("size_bytes", &ModelInfo::size_bytes)
        .def_readonly("n_ctx_train", &ModelInfo::n_ctx_train)
        .def_readonly("n_embd", &ModelInfo::n_embd)
        .def_readonly("n_layer", &ModelInfo::n_layer)
        .def_readonly("n_head", &ModelInfo::n_head)
        .def_readonly("n_vocab", &ModelInfo::n_vocab)
        .def_readonly("chat_template", &ModelInfo::chat_template)
        .def_readonly("metadata", &ModelInfo::metadata)
        .def_readonly("tensor_types", &ModelInfo::tensor_types);

    py::class_<Model>(m, "Model")
        .def(py::init([](const std::string & path, int n_gpu_layers, bool vocab_only) {
                 py::gil_scoped_release release;
                 return std::make_unique<Model>(path, n_gpu_layers, vocab_only);
             }),
             py::arg("path"), py::arg("n_gpu_layers") = 0, py::arg("vocab_only") = false)
        .def_property_readonly("path", &Model::path)
        .def("info", &Model::info)
        .def("tokenize",
             [](const Model & self, const py::str & text, bool add_special, bool parse_special) {
                 return self.tokenize(utf8_arg(text, "the text to tokenize"), add_special, parse_special);
             },
             py::arg("text"), py::arg("add_special") = false, py::arg("parse_special") = true)
        .def("detokenize",
             [](const Model & self, const std::vector<int32_t> & tokens, bool render_special) {
                 return lenient_str(self.detokenize(tokens, render_special));
             },
             py::arg("tokens"), py::arg("render_special") = true)
        .def("apply_chat_template",
             [](const Model & self, const std::vector<py::dict> & messages, bool add_assistant,
                const std::string & tmpl) {
                 std::vector<Message> msgs;
                 for (const auto & mm : messages) {
                     if (!mm.contains("role") || !mm.contains("content") || !py::isinstance<py::str>(mm["role"]) ||
                         !py::isinstance<py::str>(mm["content"])) {
                         throw Error("every message needs a text 'role' and 'content'");
                     }
                     msgs.push_back({utf8_arg(mm["role"], "a message's role"),
                                     utf8_arg(mm["content"], "a message's content")});
                 }
                 return lenient_str(self.apply_chat_template(msgs, add_assistant, tmpl));
             },
             py::arg("messages"), py::arg("add_assistant") = true, py::arg("template") = "")
        .def("save", [](const Model & self, const std::string & out, const std::map<std::string, std::string> & kv) {
                 py::gil_scoped_release release;
                 save_weights(self.get(), Metadata(self.path()), out, kv);
             },
             py::arg("out_path"), py::arg("kv") = std::map<std::string, std::string>{},
             "Write the model as GGUF with its file's metadata plus `kv` (atomic).")
        .def("generate", &generate_py, py::arg("prompt"), py::arg("max_tokens") = 128, py::arg("temperature") = 0.7f,
             py::arg("top_k") = 40, py::arg("top_p") = 0.95f, py::arg("seed") = 42,
             py::arg("stop") = std::vector<std::string>{}, py::arg("n_ctx") = 2048, py::arg("n_threads") = 0,
             py::arg("grammar") = "", py::arg("fresh_context") = false, py::arg("max_repeats") = 0,
             "Generate from `prompt`. The model's session keeps its KV cache between calls and decodes only "
             "from the first token that differs; fresh_context=True makes a new context for this call "
             "(the one-at-a-time reference path). `grammar`: GBNF with a `root` rule, '' = none. "
             "max_repeats > 0: stop (stop_reason 'loop') once a call or sentence is written more often "
             "(replay.end_at_loop's spans).")
        .def("replay", &replay_py, py::arg("prompts"), py::arg("streams"), py::arg("max_tokens") = 128,
             py::arg("stop") = std::vector<std::string>{}, py::arg("n_ctx") = 2048, py::arg("n_parallel") = 8,
             py::arg("kv_cells") = 0, py::arg("n_threads") = 0, py::arg("grammar") = "",
             py::arg("max_repeats") = 0, py::arg("progress") = py::none(),
             "Greedy generations for many prompts (token lists, BOS included) at once: prompts of one stream "
             "share their decoded prefix, up to n_parallel generations run in one batch. Returns (results in "
             "prompt order, stats). kv_cells: the session's KV size (0 = 2 n_ctx + n_parallel max_tokens).")
        .def("next_logits",
             [](const Model & self, const std::vector<int32_t> & tokens, int n_ctx) {
                 std::vector<float> out;
                 {
                     py::gil_scoped_release release;
                     SessionOptions so;
                     so.n_ctx = n_ctx;
                     out = self.session(so).next_logits(tokens);
                 }
                 py::array_t<float> a((py::ssize_t) out.size());
                 std::copy(out.begin(), out.end(), a.mutable_data());
                 return a;
             },
             py::arg("tokens"), py::arg("n_ctx") = 2048,
             "The logits after `tokens` (BOS included), with the session's cache reused as by generate().")
        .def("cached_tokens", &Model::cached_tokens,
             "Tokens the session keeps from the last generate() (a chat's reused prefix).");

    py::class_<TrainOptions>(m, "TrainOptions")
        .def(py::init<>())
        .def_readwrite("n_ctx", &TrainOptions::n_ctx)
        .def_readwrite("epochs", &TrainOptions::epochs)
        .def_readwrite("max_steps", &TrainOptions::max_steps)
        .def_readwrite("lr", &TrainOptions::lr)
        .def_readwrite("lr_min_ratio", &TrainOptions::lr_min_ratio)
        .def_readwrite("warmup_steps", &TrainOptions::warmup_steps)
        .def_readwrite("weight_decay", &TrainOptions::weight_decay)
        .def_readwrite("beta1", &TrainOptions::beta1)
        .def_readwrite("beta2", &TrainOptions::beta2)
        .def_readwrite("eps", &TrainOptions::eps)
        .def_readwrite("optimizer", &TrainOptions::optimizer)
        .def_readwrite("grad_accum", &TrainOptions::grad_accum)
        .def_readwrite("trainable", &TrainOptions::trainable)
        .def_readwrite("method", &TrainOptions::method)
        .def_readwrite("lora_rank", &TrainOptions::lora_rank)
        .def_readwrite("lora_alpha", &TrainOptions::lora_alpha)
        .def_readwrite("lora_targets", &TrainOptions::lora_targets)
        .def_readwrite("lora_init", &TrainOptions::lora_init)
        .def_readwrite("n_threads", &TrainOptions::n_threads)
        .def_readwrite("n_gpu_layers", &TrainOptions::n_gpu_layers)
        .def_readwrite("matmul_precision", &TrainOptions::matmul_precision)
        .def_property("seed", [](const TrainOptions & o) { return (int64_t) o.seed; },
                      [](TrainOptions & o, int64_t seed) { o.seed = seed_arg(seed); })
        .def_readwrite("checkpoint_dir", &TrainOptions::checkpoint_dir)
        .def_readwrite("save_every", &TrainOptions::save_every)
        .def_readwrite("eval_every", &TrainOptions::eval_every)
        .def_readwrite("start_step", &TrainOptions::start_step)
        .def_readwrite("kv", &TrainOptions::kv);

    m.def("train", &train_py, py::arg("base"), py::arg("out"), py::arg("tokens"), py::arg("labels"),
          py::arg("val_tokens"), py::arg("val_labels"), py::arg("options"), py::arg("callback") = py::none(),
          py::arg("label_weights") = py::none(),
          "Fine-tune `base` on token windows (labels -1 = masked; label_weights: each training label's "
          "loss weight, default 1) and write the result to `out`.");

    m.def("evaluate",
          [](const std::string & path, py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
             py::array_t<int32_t, py::array::c_style | py::array::forcecast> labels, int n_threads, int n_gpu_layers,
             const std::string & adapter) {
              Windows w = to_windows(tokens, labels, "evaluation set");
              const int n_ctx = (int) tokens.shape(1);
              py::gil_scoped_release release;
              return evaluate(path, w, n_ctx, n_threads, n_gpu_layers, adapter);
          },
          py::arg("path"), py::arg("tokens"), py::arg("labels"), py::arg("n_threads") = 0, py::arg("n_gpu_layers") = 0,
          py::arg("adapter") = "",
          "Mean loss and accuracy over labelled positions, by plain inference (optionally with a LoRA adapter).");

    m.def("quantize",
          [](const std::string & in, const std::string & out, const std::string & type, int n_threads,
             const std::string & token_embedding_type) {
              QuantizeResult r;
              {
                  py::gil_scoped_release release;
                  r = quantize(in, out, type, n_threads, token_embedding_type);
              }
              py::dict d;
              d["in_bytes"] = r.in_bytes;
              d["out_bytes"] = r.out_bytes;
              d["type"] = r.type;
              return d;
          },
          py::arg("in_path"), py::arg("out_path"), py::arg("type"), py::arg("n_threads") = 0,
          py::arg("token_embedding_type") = "",
          "Quantize (or dequantize, with F32/F16) a GGUF; writes atomically.");

    m.def("bf16_matmul_supported", &bf16_matmul_supported,
          "Whether training can run its weight products in BF16 on this CPU (AMX-BF16 or AVX512-BF16), as "
          "matmul_precision 'auto' then does.");

    m.def("f32_gemm_supported", &f32_gemm_supported,
          "Whether training's F32 weight products run on packed operands with AVX2 FMAs here (patch 0015); "
          "False without AVX2 and FMA in the build, in AVX-512 builds (they keep tinyBLAS), or with "
          "GGML_F32_GEMM=tinyblas in the environment.");

    m.def("resolve_matmul_precision", &resolve_matmul_precision, py::arg("precision"),
          "matmul_precision ('auto', 'bf16', 'f32') as training runs it here: 'bf16' or 'f32'; "
          "NativeError for an unknown value or for 'bf16' without AMX-BF16 or AVX512-BF16.");

    m.def("adapter_path", &adapter_path, py::arg("model_path"),
          "Where a LoRA-trained model file's adapter lives: x.gguf -> x.lora.gguf.");

    m.def("merge_adapter",
          [](const std::string & base, const std::string & adapter, const std::string & out,
             const std::map<std::string, std::string> & kv) {
              py::gil_scoped_release release;
              merge_adapter(base, adapter, out, kv);
          },
          py::arg("base"), py::arg("adapter"), py::arg("out"), py::arg("kv") = std::map<std::string, std::string>{},
          "Merge a GGUF LoRA into its base (W + alpha/rank * B A, F32) and write one GGUF; atomic.");

    m.def("logits",
          [](const std::string & path, const std::vector<int32_t> & tokens, const std::string & adapter, int n_threads) {
              std::vector<float> out;
              {
                  py::gil_scoped_release release;
                  out = logits(path, tokens, adapter, n_threads);
              }
              const py::ssize_t n_vocab = tokens.empty() ? 0 : (py::ssize_t) (out.size() / tokens.size());
              py::array_t<float> a({(py::ssize_t) tokens.size(), n_vocab});
              std::copy(out.begin(), out.end(), a.mutable_data());
              return a;
          },
          py::arg("path"), py::arg("tokens"), py::arg("adapter") = "", py::arg("n_threads") = 0,
          "Logits at every position of `tokens` (n_tokens x n_vocab), optionally with a LoRA adapter.");

    m.def("divergence",
          [](const Model & reference, const std::vector<const Model *> & candidates,
             const std::vector<std::vector<int32_t>> & sequences, const std::vector<std::vector<uint8_t>> & masks,
             int n_threads) {
              std::vector<Divergence> r;
              {
                  py::gil_scoped_release release;
                  r = divergence(reference, candidates, sequences, masks, n_threads);
              }
              py::list out;
              for (const auto & d : r) {
                  out.append(divergence_dict(d));
              }
              return out;
          },
          py::arg("reference"), py::arg("candidates"), py::arg("sequences"), py::arg("masks"), py::arg("n_threads") = 0,
          "Teacher-forced KL divergence and top-1 agreement of each candidate against the reference at the "
          "positions whose mask is non-zero (2 = the next token is inside a tool call); also both models' loss.");

    m.def("op_gradients", &op_gradients, py::arg("op"), py::arg("inputs"), py::arg("shape"),
          py::arg("weights") = std::vector<float>{},
          "Value and input gradients of sum(op(inputs) * weights) through ggml's backward pass.");
}
