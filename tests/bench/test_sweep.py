"""results.json schema, CSV/Markdown outputs and resume of a tiny quick sweep."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import lowbit.data
import lowbit.deploy
import lowbit.train
import lowbit.verify.run
from lowbit.bench import BenchOptions, run_bench
from lowbit.bench.report import CSV_COLUMNS, SCHEMA_VERSION, markdown
from lowbit.bench.sweep import run_dir_of, train_config
from lowbit.cli.commands import _bench_options, cmd_bench
from lowbit.cli.parser import build_parser
from lowbit.core.scores import (
    DEFAULT_OOD_SCORE,
    DEFAULT_OOD_VIEWS,
    SCORES,
    VIEW_SCORES,
    detector_name,
)
from lowbit.errors import ConfigError

ROW_KEYS = {
    "recipe", "head", "loss", "seed", "run_dir", "accuracy", "val_accuracy", "ood", "roc",
    "fewshot", "deployed_bits", "bops", "layers", "latency_ms", "verify", "confusion_matrix",
    "class_names", "train_seconds", "seconds", "reused", "ood_default",
}  # fmt: skip

DEPLOYED = detector_name(DEFAULT_OOD_SCORE, DEFAULT_OOD_VIEWS)


def test_results_json_schema(tiny_sweep):
    _, out, results = tiny_sweep
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["schema_version"] == SCHEMA_VERSION
    assert {"options", "wall_seconds", "machine", "rows", "summary", "anchor", "command"} <= set(
        saved
    )
    # fp32 pre-training starts every row but is not a requested recipe: not reported
    assert [(r["recipe"], r["seed"]) for r in saved["rows"]] == [("w2a2", 0), ("w1a2", 0)]
    for row in saved["rows"]:  # every row: pre-training + `epochs` at its recipe (equal budgets)
        record = json.loads((Path(row["run_dir"]) / "config.json").read_text())
        assert Path(record["train"]["init"]).name == "fp32_pretrain"
    for row in saved["rows"]:
        assert set(row) == ROW_KEYS
        assert 0.0 <= row["accuracy"] <= 1.0
        assert set(row["ood"]) == set(SCORES) | {
            detector_name(name, DEFAULT_OOD_VIEWS) for name in VIEW_SCORES
        }
        assert row["ood_default"] == DEPLOYED
        assert row["roc"]["fpr"][0] == 0.0 and row["roc"]["tpr"][-1] == 1.0
        assert row["deployed_bits"]["total"] == (
            row["deployed_bits"]["weights"] + row["deployed_bits"]["thresholds"]
        )
        assert row["bops"]["total"] == sum(layer["bops"] for layer in row["bops"]["layers"])
        assert all(layer["accumulator_bits"] for layer in row["layers"][:-1])
        assert set(row["latency_ms"]) == {"1", "64"}
        assert row["verify"]["ok"] and row["verify"]["unexplained"] == 0
        assert row["fewshot"]["way"] == 2  # two held-out classes: way = min(5, 2)
        assert set(row["fewshot"]["shots"]) == {"1", "5"}
    summary = {entry["recipe"]: entry for entry in saved["summary"]}
    assert set(summary) == {"w2a2", "w1a2"}
    assert summary["w1a2"]["accuracy_std"] == 0.0  # one seed
    gap = saved["anchor"]["ours"][0]
    assert gap["gap_points"] == round(gap["w2a2"] - gap["w1a2"], 2)
    assert saved["anchor"]["reference"]["gap_points"] == 1.23


def test_csv_and_markdown(tiny_sweep):
    _, out, results = tiny_sweep
    with open(out / "results.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert list(lines[0]) == CSV_COLUMNS
    assert [line["recipe"] for line in lines] == ["w2a2", "w1a2"]
    report = (out / "report.md").read_text()
    assert "| w1a2 | cosine | logitnorm |" in report and "pytest tiny sweep" in report
    assert "deployed FPR95" in report and f"| {DEPLOYED} |" in report
    assert "![accuracy vs deployed bits](accuracy_vs_bits.png)" in report
    section = (out / "readme_section.md").read_text()
    assert section.startswith("### Recipe sweep") and "`pytest tiny sweep`" in section
    assert "| w2a2 | cosine | logitnorm |" in section and "BNN-PYNQ" in section


def test_cli_bench_options():
    args = build_parser().parse_args(
        ["bench", "--quick", "--recipes", "w2a2,w1a2", "--seeds", "2", "--verify-n", "8"]
    )
    assert args.func is cmd_bench
    given, command = _bench_options(args)
    assert (given.recipes, given.seeds, given.verify_n, given.quick) == (
        ("w2a2", "w1a2"),
        2,
        8,
        True,
    )
    assert (given.heads, given.losses, args.out) == (("cosine",), ("logitnorm",), "runs/bench")
    assert given.per_class is None
    assert command == (
        "lowbit bench --data builtin --recipes w2a2,w1a2 --heads cosine --losses logitnorm "
        "--seeds 2 --verify-n 8 --out runs/bench --quick"
    )
    options = BenchOptions(quick=True).resolved()
    assert options.per_class == 120 and BenchOptions().resolved().per_class is None
    assert train_config(BenchOptions(per_class=30).resolved(), {"recipe": "w1a2", "head": "cosine",
                        "loss": "ce", "seed": 0}, Path("out")).per_class == 30  # fmt: skip
    assert not given.learn_scale
    assert _bench_options(build_parser().parse_args(["bench", "--learn-scale"]))[0].learn_scale
    learned = BenchOptions(learn_scale=True).resolved()
    for head, learns in (("cosine", True), ("linear", False)):  # a linear head has no scale
        config = {"recipe": "w1a2", "head": head, "loss": "ce", "seed": 0}
        assert train_config(learned, config, Path("out")).learn_scale is learns
    assert "cosine scale learned" in markdown(
        {"options": learned.to_dict(), "wall_seconds": 60, "machine": {"cpu_count": 2},
         "summary": [], "anchor": {"reference": {}, "ours": []}}, {}
    )  # fmt: skip


def test_resume_trains_nothing_when_finished(tiny_sweep, monkeypatch):
    options, out, first = tiny_sweep
    checkpoints = sorted(out.glob("runs/**/checkpoint.pt"))
    assert len(checkpoints) == 3  # fp32_pretrain, w2a2, w1a2
    mtimes = [path.stat().st_mtime_ns for path in checkpoints]
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a finished configuration was trained, exported or verified again")

    monkeypatch.setattr(lowbit.train, "train", refuse)
    monkeypatch.setattr(lowbit.deploy, "export_run", refuse)
    monkeypatch.setattr(lowbit.verify.run, "verify_run", refuse)
    second = run_bench(options, out, progress=False)
    assert calls == []
    assert [path.stat().st_mtime_ns for path in checkpoints] == mtimes
    assert all(row["reused"] for row in second["rows"])
    assert [r["accuracy"] for r in second["rows"]] == [r["accuracy"] for r in first["rows"]]


def test_partial_run_resumes_from_its_checkpoint(tiny_sweep, monkeypatch):
    options, out, _ = tiny_sweep
    w1a2 = run_dir_of(out, {"recipe": "w1a2", "head": "cosine", "loss": "logitnorm", "seed": 0})
    (w1a2 / "metrics.json").unlink()  # as if killed after its last checkpoint
    (w1a2 / "verify.json").unlink()
    calls = []
    real_train = lowbit.train.train

    def counting(config, run_dir, **kwargs):
        calls.append((config.recipe, kwargs.get("resume")))
        return real_train(config, run_dir, **kwargs)

    monkeypatch.setattr(lowbit.train, "train", counting)
    results = run_bench(options, out, progress=False)
    assert calls == [("w1a2", True)]
    assert (w1a2 / "verify.json").is_file()
    assert [row["reused"] for row in results["rows"]] == [True, False]


def test_finished_runs_on_changed_data_stop_the_sweep(tiny_sweep, monkeypatch):
    """The same configs on data that changed since: one ConfigError, nothing retrained."""
    options, out, _ = tiny_sweep
    real = lowbit.data.load_splits

    def changed(*args, **kwargs):
        splits = real(*args, **kwargs)
        splits.test.x[0, 0, 0, 0] += 1.0  # one pixel of one test image
        return splits

    monkeypatch.setattr(lowbit.data, "load_splits", changed)
    monkeypatch.setattr(lowbit.train, "train", None)  # calling it would fail differently
    with pytest.raises(ConfigError, match=r"fp32_pretrain/config\.json: data .* differ"):
        run_bench(options, out, progress=False)


def test_rows_cached_before_the_rename_read_as_deployed_bits(tmp_path):
    from lowbit.bench.sweep import ROW_NAME, _cached_row, _measure_key
    from tests.bench.conftest import tiny_options

    options = tiny_options(tmp_path).resolved()
    bits = {"total": 10, "weights": 6, "thresholds": 4, "source": "model.json"}
    cached = {"key": _measure_key(options), "row": {"recipe": "w2a2", "model_bits": bits}}
    (tmp_path / ROW_NAME).write_text(json.dumps(cached))
    row = _cached_row(tmp_path, options)
    assert row["deployed_bits"] == bits and "model_bits" not in row
