"""The probe app_runtime.check_runtime runs inside the app runtime's own venv (JSON in, JSON out).

Stdlib + llama_cpp only: it runs under that venv's interpreter, which has no dndllama, and is read
as text and passed to `python -c`; its work runs only as __main__, so importing it does nothing.
Usage: python -c "$(cat app_runtime_probe.py)" REQUEST.json REPORT.json
"""

import ctypes, json, sys, time

if __name__ == "__main__":   # run as `python -c` text; importing it (a module scan) does nothing
    req = json.load(open(sys.argv[1]))
    out = {"loaded": False, "error": None, "warnings": [], "log_tail": []}
    WARN, ERROR, CONT = 3, 4, 5  # enum ggml_log_level of this llama.cpp (llama_cpp/_logger.py's table is stale)
    log = []
    log_file = open(sys.argv[2] + ".log", "w")  # survives a crash inside llama.cpp

    def save(stage):
        """Written after every stage, so a crash in the next one still reports how far it got."""
        out["stage"] = stage
        out["warnings"] = [text.strip() for level, text in log if level == WARN and text.strip()]
        out["log_tail"] = [text.rstrip() for level, text in log[-20:]]
        with open(sys.argv[2], "w") as f:
            json.dump(out, f)

    def finish():
        save("done")
        sys.exit(0)

    import llama_cpp
    out["runtime_version"] = llama_cpp.__version__

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        text = text.decode("utf-8", "replace")
        if level == CONT and log:
            log[-1] = (log[-1][0], log[-1][1] + text)
        else:
            log.append((level, text))
        log_file.write(text)
        log_file.flush()

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))

    start = time.perf_counter()
    try:
        llm = llama_cpp.Llama(model_path=req["model"], n_ctx=req["n_ctx"], n_threads=req["n_threads"],
                              n_gpu_layers=0, seed=req["seed"], verbose=False, lora_path=req.get("lora"))
    except Exception as exc:  # the cause is in llama.cpp's error log lines
        errors = [text.strip() for level, text in log if level == ERROR and text.strip()]
        out["error"] = "\n".join(errors) or str(exc)
        finish()
    out["loaded"] = True
    out["load_s"] = round(time.perf_counter() - start, 3)
    save("loaded; rendering the chat template")
    model, vocab = llm._model.model, llm._model.vocab

    # the chat template, as the app applies it: the GGUF's own template through the C function;
    # no template, or one that matches no built-in format, makes cactus fall back to chatml
    tmpl = llama_cpp.llama_model_chat_template(model, None)
    out["template_source"] = "gguf" if tmpl else "chatml (the GGUF has no tokenizer.chat_template)"
    messages = req["messages"]
    keep = [(m["role"].encode(), m["content"].encode()) for m in messages]
    chat = (llama_cpp.llama_chat_message * len(keep))(*[llama_cpp.llama_chat_message(r, c) for r, c in keep])

    def render(template):
        n = llama_cpp.llama_chat_apply_template(template, chat, len(keep), True, None, 0)
        if n < 0:
            return None
        buf = ctypes.create_string_buffer(n + 1)
        llama_cpp.llama_chat_apply_template(template, chat, len(keep), True, buf, n + 1)
        return buf.raw[:n].decode("utf-8")

    prompt = render(tmpl or b"chatml")
    if prompt is None:
        out["template_source"] = "chatml (the GGUF's template matches no built-in format)"
        prompt = render(b"chatml")
    out["prompt"] = prompt
    save("template rendered; tokenizing")

    # tokenize as the app does: special tokens parsed, BOS added when the vocabulary says so
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    out["add_bos"] = add_bos
    bos_text = llama_cpp.llama_vocab_get_text(vocab, llama_cpp.llama_vocab_bos(vocab)).decode("utf-8", "replace")
    out["bos_text"] = bos_text
    out["effective_prompt"] = (bos_text if add_bos else "") + prompt
    out["prompt_tokens"] = tokens
    if len(tokens) + req["max_tokens"] > req["n_ctx"]:
        out["error"] = (f"the prompt ({len(tokens)} tokens) + max_tokens ({req['max_tokens']}) does not fit "
                        f"n_ctx={req['n_ctx']}; pass a larger n_ctx")
        finish()
    save("tokenized; generating")

    # greedy, token by token: create_completion() holds back tokens that end in an incomplete UTF-8
    # sequence *before* counting them against max_tokens, so byte-fallback output can run to n_ctx
    llm.set_seed(req["seed"])
    completion, out["finish_reason"] = [], "length"
    start = time.perf_counter()
    try:
        for token in llm.generate(tokens, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                out["finish_reason"] = "stop"
                break
            completion.append(token)
            if len(completion) >= req["max_tokens"]:
                break
    except Exception as exc:  # e.g. llama_decode failing; the cause is in the error/warning log
        causes = [text.strip() for level, text in log[-5:] if level in (WARN, ERROR) and text.strip()]
        out["error"] = "\n".join(causes + [str(exc)])
    out["generate_s"] = round(time.perf_counter() - start, 3)
    out["generated_tokens"] = len(completion)
    out["generated_ids"] = completion
    out["text"] = llm.detokenize(completion, prev_tokens=tokens).decode("utf-8", "replace")
    finish()
