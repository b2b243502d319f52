import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dndllama import cli
from dndllama.cli import main

DATA = Path(__file__).parent / "data"
INDEPENDENT = DATA / "independent"
PYTHON_DIR = Path(__file__).parent.parent / "python"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_independent_scenarios_validate_clean(capsys):
    code, out, err = run(capsys, "data", "check", str(INDEPENDENT))
    assert code == 0, out + err
    assert "error" not in out.replace("0 errors", "")
    assert "3 files checked: 0 errors, 0 warnings" in out
    for category in ("combat", "exploration", "roleplay"):
        assert category in out
    for heading in ("Tool calls", "without tool calls", "median length (tokens)", "p90 length (tokens)"):
        assert heading in out   # counted by the embedded base's tokenizer, the folder's default base


def test_exchanges_over_the_training_window_are_errors_without_passing_a_base(tmp_path, capsys):
    """`train` refuses an exchange longer than ctx; data check must say so first, with the folder's
    own base and ctx, not only when --base is passed."""
    data = tmp_path / "data"
    shutil.copytree(INDEPENDENT, data)
    (data / "dndllama.toml").write_text("ctx = 256\n", encoding="utf-8")
    code, out, err = run(capsys, "data", "check", str(data))
    assert code == 1, out + err
    assert "error: combat/wolves_at_the_ford.md: exchange 1 has 589 tokens, cut to ctx=256" in out
    assert f"fix: raise ctx to 768 in {data / 'dndllama.toml'}, or split the long DM turns" in out
    assert "pass --base" not in out


def test_malformed_copy_fails_naming_the_line(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(INDEPENDENT, data)
    target = data / "combat" / "wolves_at_the_ford.md"
    lines = target.read_text(encoding="utf-8").splitlines()
    line = lines.index("[health: Brakka, -6]") + 1
    lines[line - 1] = "[health: Brakka, 6]"
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "data", "check", str(data))
    assert code == 1
    assert f"combat/wolves_at_the_ford.md:{line}: error: argument 2 '6' is not a valid signed_int" in out
    assert "1 error," in out
    assert "Traceback" not in out + err


def test_warnings_alone_exit_zero(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(INDEPENDENT, data)
    target = data / "roleplay" / "the_spice_merchant.md"
    target.write_text(target.read_text(encoding="utf-8").replace("persuasion: 9", "charm: 9"), encoding="utf-8")
    code, out, _ = run(capsys, "data", "check", str(data))
    assert code == 0
    assert "roleplay/the_spice_merchant.md:" in out and ": warning: result label 'charm'" in out


def test_missing_folder_is_two_lines_without_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "data", "check")
    assert code == 1
    assert err.splitlines() == [
        "error: data folder 'ai-training' not found",
        "  what to do: pass the folder with your scenario files: dndllama data check PATH",
    ]


def test_bad_tools_toml_is_reported(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(INDEPENDENT, data)
    (data / "tools.toml").write_text("[arg_types]\nbroken = '(['\n", encoding="utf-8")
    code, _, err = run(capsys, "data", "check", str(data))
    assert code == 1 and "not a valid regex" in err and "what to do" in err


def test_unexpected_failure_traceback_only_with_debug(monkeypatch, capsys):
    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli.common, "load_folder", explode)
    code, _, err = run(capsys, "data", "check", str(INDEPENDENT))
    assert code == 1 and err.startswith("error: disk on fire\n") and "Traceback" not in err
    with pytest.raises(RuntimeError):
        main(["data", "check", str(INDEPENDENT), "--debug"])
    with pytest.raises(RuntimeError):
        main(["--debug", "data", "check", str(INDEPENDENT)])


def test_rich_tables_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = run(capsys, "data", "check", str(INDEPENDENT))
    assert code == 0 and ("┃" in out or "│" in out)


def test_python_dash_m_entry_point():
    env = {**os.environ, "PYTHONPATH": str(PYTHON_DIR)}
    result = subprocess.run([sys.executable, "-m", "dndllama", "data", "check", str(INDEPENDENT)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "3 files checked" in result.stdout
