"""The README's commands, end to end on tiny settings, and clean one-line errors."""

from __future__ import annotations

import json

import pytest

from lowbit.cli import main
from lowbit.core.scores import (
    DEFAULT_OOD_SCORE,
    DEFAULT_OOD_VIEWS,
    SCORES,
    VIEW_SCORES,
    detector_name,
)


@pytest.mark.slow
def test_run_quick_end_to_end(tmp_path, capsys):
    assert main(["--quiet", "run", "--quick", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "integer runtime: 0 of" in out
    # the deployed detector beside MSP, its view scores measured on the export's integer graph
    assert f"{detector_name(DEFAULT_OOD_SCORE, DEFAULT_OOD_VIEWS)} (deployed) AUROC" in out
    metrics = json.loads((tmp_path / "run" / "w1a2" / "metrics.json").read_text())
    assert {detector_name(name, DEFAULT_OOD_VIEWS) for name in VIEW_SCORES} <= set(metrics["ood"])
    report = json.loads((tmp_path / "run" / "w1a2" / "verify.json").read_text())
    assert report["unexplained"] == 0 and report["mismatches"] == 0
    assert report["checked_values"] > 0


@pytest.mark.slow
def test_run_quick_inspect_adds_stage_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--quiet", "run", "--quick", "--inspect", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "stage 1 on brick" in text and "image AUROC" in text and "time per part" in text
    report = json.loads((out / "w1a2" / "verify.json").read_text())
    assert report["unexplained"] == 0 and report["detector"]["brick"]["mismatches"] == 0
    assert (out / "w1a2" / "detector" / "brick.int.onnx").is_file()
    assert main(["--quiet", "--json", "run", "--quick", "--inspect", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)["inspect"]
    assert summary["texture"] == "brick" and summary["verify_unexplained"] == 0


def test_train_export_verify_eval(tmp_path, capsys):
    run = tmp_path / "w2a2"
    args = [
        "--quiet",
        "train",
        "--recipe",
        "w2a2",
        "--width",
        "8",
        "--epochs",
        "1",
        "--per-class",
        "80",  # the whole chain, on 80 of the built-in set's 600 images per type
        "--out",
        str(run),
    ]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for key in (
        "recipe",
        "head",
        "loss",
        "accuracy",
        "per_class_accuracy",
        "parameter_bits",
        "epochs",
        "seed",
    ):
        assert key in metrics
    views = {detector_name(name, DEFAULT_OOD_VIEWS) for name in VIEW_SCORES}
    assert set(metrics["ood"]) == set(SCORES) | views
    assert metrics["ood_default"] == detector_name(DEFAULT_OOD_SCORE, DEFAULT_OOD_VIEWS)
    assert main(["--quiet", "export", str(run), "--batch", "4"]) == 0
    for name in ("model.qonnx.onnx", "model.qcdq.onnx", "model.int.onnx", "model.json"):
        assert (run / name).is_file()
    assert (run / "model.ood.npz").is_file()
    assert main(["--quiet", "verify", str(run), "--n", "40", "--random", "16"]) == 0
    report = json.loads((run / "verify.json").read_text())
    assert report["unexplained"] == 0 and report["mismatches"] == 0
    capsys.readouterr()  # the commands' output so far
    # global flags work after the subcommand too; eval gives exactly the training's metrics
    assert main(["eval", str(run), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out) == metrics
    assert main(["--quiet", "eval", str(run)]) == 0
    text = capsys.readouterr().out
    deployed = detector_name(DEFAULT_OOD_SCORE, DEFAULT_OOD_VIEWS)
    assert f"{deployed} (deployed)" in text and "None" not in text
    assert "loss logitnorm (τ 1), 1 epoch, seed 0" in text
    for name in (*metrics["class_names"], *SCORES, "confusion matrix", "deployed bits"):
        assert name in text, name


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["train", "--recipe", "w9a2", "--out", "{tmp}/x"], 3, "w9a2"),
        (["export", "{tmp}/missing"], 3, "config.json"),
        (["verify", "{tmp}"], 5, "model.json"),
        (["train", "--data", "{tmp}/nope", "--epochs", "1", "--out", "{tmp}/y"], 4, "nope"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, argv, code, needle):
    argv = [part.replace("{tmp}", str(tmp_path)) for part in argv]
    assert main(["--quiet", *argv]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lowbit: error:") and needle in err[0]
    assert "Traceback" not in "\n".join(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--quiet", "verify", "DIR"],
        ["verify", "DIR", "--json", "--quiet"],
        ["--json", "verify", "DIR", "--quiet"],
    ],
)
def test_global_flags_before_or_after_the_subcommand(argv):
    from lowbit.cli.parser import build_parser

    args = build_parser().parse_args(argv)
    assert (args.json, args.quiet, args.debug) == (True, True, False)
    assert build_parser().parse_args(["verify", "DIR"]).json is False
