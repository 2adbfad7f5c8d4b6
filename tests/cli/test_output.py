"""What a person sees: results on stdout, logs on stderr, nothing but results with --quiet, and
no dependency warnings (each command in a fresh process, as a user runs it)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings

import pytest
from tqdm import tqdm

from lowbit import jobs
from lowbit.cli import IGNORED_WARNINGS, configure_output, main


def lowbit(*argv: str) -> subprocess.CompletedProcess:
    """Runs `python -m lowbit argv...` with Python's default warning filters."""
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # every warning, once per place
    return subprocess.run(
        [sys.executable, "-m", "lowbit", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_quiet_train_and_export_print_only_results(tmp_path):
    run = str(tmp_path / "run")
    tiny = ["--width", "8", "--epochs", "1", "--per-class", "6", "--image-size", "16"]
    train = lowbit("--quiet", "train", "--recipe", "w2a2", *tiny, "--out", run)
    assert train.returncode == 0, train.stderr
    # brevitas warns when its ONNX export is imported: the first place a user met it
    export = lowbit("--quiet", "export", run)
    assert export.returncode == 0, export.stderr
    for result in (train, export):
        assert result.stderr == ""  # no warning, log line or progress bar
        lines = result.stdout.splitlines()
        assert lines and all(": " in line for line in lines), result.stdout
    assert "parameter_bits: " in train.stdout and "deployed_bits: " in export.stdout


def test_warnings_follow_the_log_level_and_dependency_noise_is_dropped(caplog):
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.simplefilter("always")  # as a user's Python would show them, not pytest's
        configure_output(quiet=False)
        try:
            for message, category, module in IGNORED_WARNINGS:
                text = message.replace("\\", "")
                module = module.replace("\\", "") + "equalize"
                warnings.warn_explicit(text, category, "x.py", 1, module=module)
            warnings.warn_explicit("lowbit's own", UserWarning, "y.py", 1, module="lowbit.x")
        finally:
            logging.captureWarnings(False)
    warned = [r.getMessage() for r in caplog.records if r.name == "py.warnings"]
    assert len(warned) == 1 and "lowbit's own" in warned[0]


def test_main_job_summary_is_words_of_its_result():
    from lowbit.report_text import main_job_text

    ood = {"msp": {"auroc": 0.9, "fpr95": 0.4}}
    result = {
        "out": "runs/main",
        "epochs": {"fp32": 15, "w1a2": 15},
        "fp32": {"accuracy": 0.957},
        "w1a2": {"accuracy": 0.942, "ood": ood, "ood_default": "msp"},
        "deployed_bits": 150_784,
        "verify": {},
    }
    executor = {"executor": "runtime", "mismatches": 0, "checked_values": 10, "unexplained": 0,
                "checked_tensors": 5, "tail": {"max_abs_diff": 0.0, "tolerance": 1e-4}}  # fmt: skip
    text = main_job_text(result, {"executors": [executor], "layers": []})
    assert (
        "accuracy 0.957" in text and "QAT: 0.942" in text and "msp (deployed) AUROC 0.900" in text
    )
    assert "150,784 bits (18.4 KiB)" in text and "integer runtime: 0 of 10 codes" in text


def test_json_run_prints_only_json_while_the_job_logs_and_shows_progress(
    tmp_path, monkeypatch, capsys
):
    result = {"out": str(tmp_path), "deployed_bits": 151_168, "verify": {"unexplained": 0}}

    def job(out, *, quick, progress, inspect_texture=None):
        logging.getLogger("lowbit.jobs").info("training %s", out)
        for _ in tqdm(range(3), disable=not progress):
            pass
        return result

    monkeypatch.setattr(jobs, "run_main_job", job)
    assert main(["--json", "run", "--quick", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == result


@pytest.mark.slow
def test_json_run_quick_prints_only_json(tmp_path):
    run = lowbit("--json", "run", "--quick", "--out", str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)  # the whole of stdout is one JSON document
    assert result["verify"]["unexplained"] == 0 and result["deployed_bits"] > 0
    assert "INFO" in run.stderr  # logs and progress went to stderr
