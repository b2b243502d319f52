"""scripts/sweep.py end to end on a tiny real Gemma-3-architecture GGUF: two runs, each a curve of
checkpoints judged on the replayed turns, written as sweep.json / sweep.md / sweep.png, resumable."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from dndllama import _native, pipeline
from dndllama.config import load_config
from dndllama.scoring import wilson
from dndllama.train import read_log
from dndllama.validate import validate_one
from tiny_models import make_tiny_model

REPO = Path(__file__).parent.parent
INDEPENDENT = Path(__file__).parent / "data" / "independent"


def load_script():
    spec = importlib.util.spec_from_file_location("sweep_script", REPO / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = load_script()


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    base = make_tiny_model(root / "tiny.gguf", n_ctx=4096)
    data = root / "data"
    shutil.copytree(INDEPENDENT, data)
    settings = {"base": str(base), "ctx": 2048, "epochs": 1, "max_steps": 4, "eval_every": 2, "threads": 2,
                "cache_dir": str(root / "cache"), "validate_max_tokens": 16, "eval_data": ""}
    argv = ["--data", str(data), "--out", str(root / "out"), "--grid", "lr=1e-3,3e-3", "--max-turns", "3",
            "--keep-checkpoints", "--quiet", *[arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]]
    assert sweep.main(argv) == 0
    return root, argv, settings


def judged_again(root: Path, settings: dict, path: Path):
    """The point's replay redone by hand: validate_one on a Q8_0 copy, as the sweep should have."""
    config = load_config(root / "data", settings)
    data = pipeline.load_data(config)
    q8 = root / f"again-{path.parent.name}-{path.stem}.gguf"
    _native.quantize(str(path), str(q8), "Q8_0", 2)
    run = {**pipeline.validation_settings(config), "max_turns": 3}
    return validate_one("again", q8, conversations=pipeline.judged_conversations(data), vocab=data.vocab,
                        with_loss=False, **run)


def test_each_run_is_a_curve_of_judged_checkpoints(swept):
    root, _, settings = swept
    record = json.loads((root / "out" / "sweep.json").read_text())
    assert set(record["runs"]) == {"lr0.001", "lr0.003"}
    assert record["base"]["step"] == 0 and record["base"]["turns"] == 3
    for name, run in record["runs"].items():
        run_dir = root / "out" / "runs" / name
        evals = {r["step"]: r["val_loss"] for r in read_log(run_dir / "train-log.jsonl") if r["event"] == "eval"}
        assert run["done"] and [p["step"] for p in run["points"]] == sorted(evals) and len(evals) >= 2
        for point in run["points"]:
            assert point["val_loss"] == pytest.approx(evals[point["step"]])   # the eval before its checkpoint
            assert point["epoch"] == pytest.approx(point["step"] / run["steps_per_epoch"], abs=1e-4)
        assert run["training"]["lr"] == float(name[2:]) and run["eval_every"] == 2
    # one point replayed again by hand gives the same scores, counts and turns
    run = record["runs"]["lr0.003"]
    point = run["points"][0]
    files = list((root / "out" / "runs" / "lr0.003").rglob(f"{point['checkpoint']}")) or \
        [root / "out" / "runs" / "lr0.003" / "model-f32.gguf"]
    again = sweep.point_of(judged_again(root, settings, files[0]), point["step"], point["epoch"],
                           point["checkpoint"], point["val_loss"])
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in point.items() if k != "seconds"}


def test_table_and_curves(swept):
    root, _, _ = swept
    record = json.loads((root / "out" / "sweep.json").read_text())
    md = (root / "out" / "sweep.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert {"base (no training)", "lr0.001", "lr0.003"} <= set(rows)
    for name, run in record["runs"].items():
        best = sweep.best_point(run["points"])
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert cells[1] == f"{best['epoch']:.2f} ({best['step']})" and cells[2] == f"{best['val_loss']:.3f}"
        k, n = best["counts"]["no_call_accuracy"]
        low, high = wilson(k, n)
        assert cells[6] == f"{k / n:.3f} [{low:.2f}, {high:.2f}]"
    png = (root / "out" / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_a_rerun_skips_what_is_done_and_filters_runs(swept, capsys):
    root, argv, _ = swept
    before = (root / "out" / "sweep.json").read_text()
    assert sweep.main(argv + ["--runs", "0.003"]) == 0
    said = capsys.readouterr().out
    assert "1 run(s): lr0.003" in said and "finished before" in said and "step " not in said
    assert (root / "out" / "sweep.json").read_text() == before
    assert sweep.main([*argv, "--max-turns", "2"]) == 2   # other judging settings: refused, not mixed
    assert "was judged with" in capsys.readouterr().err


def test_grids():
    one = sweep.expand(sweep.DEFAULT_GRIDS[0])
    assert len(one) == 8 and one[0]["name"] == "lr5e-05-full-synth1-loss_calls"
    assert sweep.run_settings(one[0], {"epochs": 3, "lr": 1.0, "threads": 2}) == {
        "epochs": 3, "lr": 5e-5, "method": "full", "synth": 1.0, "synth_loss": "calls", "threads": 2}
    assert "lr5e-05-full-synth0" in [r["name"] for r in one]
    assert all("synth_loss" not in r["axes"] for r in one if not r["axes"]["synth"])
    product = sweep.expand({"grid": sweep.parse_grid_arg("lr=1e-4,5e-5 method=full,lora64")})
    assert [r["name"] for r in product] == ["lr0.0001-full", "lr0.0001-lora64", "lr5e-05-full", "lr5e-05-lora64"]
    assert sweep.config_overrides({"lr": 2e-4, "method": "lora64"}) == {"method": "lora", "lora_rank": 64,
                                                                          "lora_lr": 2e-4}
    with pytest.raises(sweep.SweepError, match="KEY=V1,V2"):
        sweep.parse_grid_arg("lr")
    with pytest.raises(sweep.SweepError, match="lora16"):
        sweep.config_overrides({"method": "lora32"})


def test_docs_block_is_filled_in_place(swept, tmp_path, monkeypatch):
    root, _, _ = swept
    record = json.loads((root / "out" / "sweep.json").read_text())
    (tmp_path / "docs").mkdir()
    training = tmp_path / "docs" / "training.md"
    training.write_text(f"# before\n{sweep.DOCS_BEGIN}\nold table\n{sweep.DOCS_END}\n# after\n")
    monkeypatch.setattr(sweep, "ROOT", tmp_path)
    sweep.write_outputs(record, root / "out", True, lambda line: None)
    text = training.read_text()
    assert text.startswith("# before\n") and text.endswith("# after\n") and "old table" not in text
    assert sweep.table(record) in text and "](sweep-curves.png)" in text
    assert (tmp_path / "docs" / "sweep-curves.png").read_bytes() == (root / "out" / "sweep.png").read_bytes()
    assert "sweep:begin" in (REPO / "docs" / "training.md").read_text()   # the real docs have the block
    training.write_text("# no markers\n")
    with pytest.raises(sweep.SweepError, match="no <!-- sweep:begin -->"):
        sweep.write_outputs(record, root / "out", True, lambda line: None)
