"""Every case of the corpus: one clean stderr line, its exit code, no traceback, no output.

In-process through `lowbit.cli.main(argv)` for all cases, and as `python -m lowbit` for a few,
which also shows that `--debug` brings the traceback back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lowbit.cli import main

from .cases import CASES, Case
from .files import write_image_folder, write_odd_modes


def _assert_clean(case: Case, code: int, err: str) -> None:
    lines = err.strip().splitlines()
    assert code == case.code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("lowbit: error: ") and case.needle in lines[0], lines[0]
    assert "Traceback" not in err
    for path in case.outputs:
        assert not path.exists(), f"partial output {path}"


@pytest.mark.parametrize("name", list(CASES))
def test_every_bad_input_is_one_clean_line(name, build_case, capsys):
    case = build_case(name)
    code = main(["--quiet", *case.argv])
    _assert_clean(case, code, capsys.readouterr().err)
    if name == "run_pickle_payload":
        assert not (Path(case.argv[1]) / "PWNED").exists(), "the pickle payload ran"


def _lowbit(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lowbit", *argv], capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize(
    "name",
    [
        "onnx_truncated",
        "onnx_cycle",
        "input_nan",
        "input_pickle_object",
        pytest.param("run_pickle_payload", marks=pytest.mark.slow),  # imports torch: ~9 s
    ],
)
def test_subprocess_exit_code_and_one_line(name, build_case):
    case = build_case(name)
    result = _lowbit("--quiet", *case.argv)
    _assert_clean(case, result.returncode, result.stderr)
    assert result.stdout == ""


def test_debug_shows_the_traceback(build_case):
    case = build_case("onnx_absurd_size")
    result = _lowbit("--quiet", "--debug", *case.argv)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ModelFileError" in result.stderr


def test_decompression_bomb_costs_no_memory(build_case):
    """A 20000x20000 PNG (1.2 GB decoded) is refused from its header: peak RSS stays small."""
    case = build_case("image_bomb_20000x20000")
    probe = (
        "import resource, subprocess, sys;"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "sys.stderr.write(r.stderr);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    argv = [sys.executable, "-c", probe, sys.executable, "-m", "lowbit", "--quiet", *case.argv]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert case.needle in result.stderr
    peak_mib = int(result.stdout) / 1024  # ru_maxrss is in KiB on Linux
    # measured: ~320 MiB (the torch + brevitas import); decoding would add >= 400 MiB (gray)
    assert peak_mib < 600, f"peak RSS {peak_mib:.0f} MiB"


def test_odd_but_valid_images_are_accepted(tmp_path, capsys):
    """16-bit gray, palette, 8-bit gray and RGBA images train like RGB ones."""
    data = write_image_folder(tmp_path / "data")
    for folder in ("crack", "hole"):
        write_odd_modes(data / folder)
    argv = ["--quiet", "train", "--data", str(data), "--image-size", "16", "--width", "4"]
    assert main([*argv, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert capsys.readouterr().err == ""


def test_infer_on_a_good_export_writes_all_outputs(env, tmp_path, capsys):
    """The control for the corpus: the same command on good files succeeds."""
    x = np.random.default_rng(0).normal(0, 1, (5, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npz"
    argv = ["--quiet", "--json", "infer", str(env.run), str(tmp_path / "x.npy"), "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 5 and sum(summary["predicted_class_counts"]) == 5
    with np.load(out) as outputs:
        assert outputs["logits"].shape == (5, 3)
