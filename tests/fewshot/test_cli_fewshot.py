"""`lowbit fewshot` and `lowbit enroll` on the command line: output, JSON and one-line errors."""

from __future__ import annotations

import json

from lowbit.cli import main
from lowbit.errors import ConfigError


def test_fewshot_text_and_json(w2a2_run, capsys) -> None:
    argv = ["fewshot", str(w2a2_run), "--way", "3", "--queries", "5", "--episodes", "10"]
    assert main([*argv, "--integer"]) == 0
    out = capsys.readouterr().out
    assert "3-way" in out and "integer runtime" in out and "finetune  5-shot" in out
    assert main(["--json", *argv]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 10 and set(result["results"]) == {"imprint", "finetune"}


def test_fewshot_too_many_ways_is_one_line(w2a2_run, capsys) -> None:
    assert main(["fewshot", str(w2a2_run), "--episodes", "5"]) == ConfigError.exit_code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--way 3" in err and "--unknown" in err


def test_enroll_needs_class_or_remove(w2a2_run, tmp_path, capsys) -> None:
    assert main(["enroll", str(w2a2_run)]) == ConfigError.exit_code
    assert "--class NAME" in capsys.readouterr().err
    assert main(["enroll", str(w2a2_run), "--class", "x"]) == ConfigError.exit_code
    assert "--images" in capsys.readouterr().err
    missing = str(tmp_path / "missing.png")
    assert main(["enroll", str(w2a2_run), "--class", "x", "--images", missing]) == 4
    assert "missing.png: file not found" in capsys.readouterr().err
