"""Run-directory jobs: train or reuse a run, export it, verify an export, and the main job.

The orchestration layer above the stages: it may import any stage, which no stage may do
(DESIGN.md data flow). export_with_targets calibrates the unknown-type threshold on the
integer graph with the runtime; verify_run drives lowbit.verify. Every job returns its result
as data and prints nothing: the CLI words it (lowbit/report_text.py) or prints it as JSON.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from lowbit.artifacts import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    INT_GRAPH_FILE,
    METRICS_FILE,
    deployed_bits_of,
)
from lowbit.export.api import export_model
from lowbit.io import remove_stale_staging
from lowbit.lock import writer_lock
from lowbit.train.run import splits_for

log = logging.getLogger(__name__)

# Epochs chosen so that `lowbit run` finishes in about 5 minutes on 2 CPU cores.
FP32_EPOCHS = 15
QAT_EPOCHS = 15
MAIN_JOB_QAT_RUN = "w1a2"  # the main job's quantized run folder under its --out


def is_trained(run_dir: Path, config, splits=None) -> bool:
    """True when run_dir holds metrics.json of a finished run with this config; ConfigError
    (naming its config.json) when that run was trained on other data than `splits` (None:
    config.data, loaded only when the run records a fingerprint to check)."""
    from lowbit.train import TrainConfig
    from lowbit.train.loop import load_data
    from lowbit.train.run import check_same_data

    config_path = run_dir / CONFIG_FILE
    if not ((run_dir / METRICS_FILE).is_file() and config_path.is_file()):
        return False
    record = json.loads(config_path.read_text())
    saved = record.get("train")
    if not isinstance(saved, dict):
        return False
    if TrainConfig.with_defaults(saved) != config.resolved().to_dict():
        return False
    if record.get("data_fingerprint") is not None:
        splits = load_data(config.resolved()) if splits is None else splits
        check_same_data(record, splits, config_path)
    return True


def train_or_reuse(config, run_dir: Path, progress: bool = True, *, splits=None) -> dict:
    """Returns run_dir's metrics: reused when finished with this config, else trained (resumed
    from its checkpoint when one exists). `splits` replaces loading config.data."""
    from lowbit.train import train

    if is_trained(run_dir, config, splits):
        log.info("reusing finished run %s", run_dir)
        return json.loads((run_dir / METRICS_FILE).read_text())
    resume = (run_dir / CHECKPOINT_FILE).is_file() and (run_dir / CONFIG_FILE).is_file()
    return train(config, run_dir, splits=splits, resume=resume, progress=progress)


def export_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    batch: int | None = None,
    ood_score: str | None = None,
    tpr: float = 0.95,
) -> tuple[Path, dict]:
    """Exports a trained run (see export_with_targets); returns (export folder, model.json)."""
    out_dir, description, _ = export_with_targets(
        run_dir, out_dir, batch=batch, ood_score=ood_score, tpr=tpr
    )
    return out_dir, description


def export_with_targets(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    targets: tuple[str, ...] = (),
    batch: int | None = None,
    ood_score: str | None = None,
    tpr: float = 0.95,
) -> tuple[Path, dict, dict[str, list[str]]]:
    """Exports a trained run: fits the feature-score statistics on its training split and
    calibrates the threshold of `ood_score` (None: DEFAULT_OOD_SCORE) on its validation split.

    Holds the writer lock of `out_dir` (default: the run directory); the files of `targets`
    (lowbit/targets/__init__.py) are published in one set with the graphs. Returns (export
    folder, model.json, {target: [written paths]}).
    """
    from lowbit.core.scores import DEFAULT_OOD_SCORE
    from lowbit.data import NORMALIZATION, crop_rule
    from lowbit.fewshot.openset import integer_calibration
    from lowbit.targets import write_targets
    from lowbit.train import load_run

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    model, record = load_run(run_dir)
    written: dict[str, list[str]] = {}

    def add_targets(staging: Path, description: dict) -> None:
        for name, paths in write_targets(targets, staging, description).items():
            written[name] = [str(out_dir / Path(path).relative_to(staging)) for path in paths]

    with writer_lock(out_dir):
        removed = remove_stale_staging(out_dir)  # not every temp file: --out may be any folder
        if removed:
            log.warning(
                "%s: removed the staging folder of an interrupted export: %s", out_dir, removed
            )
        splits = splits_for(record, run_dir / CONFIG_FILE)
        # calibrated on the integer graph's own logits: the runtime then keeps exactly `tpr` of val
        fit = (splits.train.x, splits.train.y, len(record["class_names"]))
        ood = integer_calibration(splits.val.x, ood_score or DEFAULT_OOD_SCORE, tpr, fit=fit)
        description = export_model(
            model,
            out_dir,
            class_names=record["class_names"],
            normalization=NORMALIZATION,
            ood=ood,
            batch=batch,
            source_run=os.path.relpath(run_dir.resolve(), out_dir.resolve()),
            crop=crop_rule() if splits.mask_crops else None,
            before_publish=add_targets if targets else None,
        )
    return out_dir, description, written


def verify_run(
    export_dir: str | Path,
    *,
    data: str | None = None,
    n: int = 1000,
    random: int = 1000,
    ties: bool = True,
    seed: int = 0,
    executors: tuple[str, ...] | None = None,
    progress: bool = True,
) -> dict:
    """Verifies an exported model against the run it came from (model.json's source_run);
    returns the report that verify.json holds."""
    from lowbit.train import load_run
    from lowbit.verify.api import (
        EXECUTORS,
        build_inputs,
        load_graph,
        read_description,
        verify_export,
    )

    export_dir = Path(export_dir)
    description = read_description(export_dir)
    run_dir = (export_dir / description.get("source_run", ".")).resolve()
    model, record = load_run(run_dir)
    real = None
    if n > 0:
        if data is not None:  # other data than the run's own: nothing to match
            record = {**record, "data": data, "data_fingerprint": None}
        real = splits_for(record, run_dir / CONFIG_FILE).test.x
    int_graph = load_graph(export_dir / INT_GRAPH_FILE) if ties else None
    inputs = build_inputs(
        description, real, n=n, random=random, ties=ties, seed=seed, int_graph=int_graph
    )
    log.info("verifying on %s", {k: len(v) for k, v in inputs.items()})
    return verify_export(
        model, export_dir, inputs, executors=executors or EXECUTORS, progress=progress
    )


def run_main_job(out: Path, *, quick: bool = False, progress: bool = True) -> dict:
    """Trains fp32 then w1a2 (conv4, cosine, LogitNorm), exports, verifies; returns both runs'
    metrics, the deployed size and verify's counts (the full verify report is
    <out>/w1a2/verify.json)."""
    from lowbit.train import TrainConfig

    fp32_epochs, qat_epochs = (1, 1) if quick else (FP32_EPOCHS, QAT_EPOCHS)
    common = dict(backbone="conv4", head="cosine", loss="logitnorm", seed=0, data="builtin")
    if quick:
        common.update(width=16, per_class=120)
    fp32_dir, qat_dir = out / "fp32", out / MAIN_JOB_QAT_RUN
    fp32 = train_or_reuse(
        TrainConfig(recipe="fp32", epochs=fp32_epochs, **common), fp32_dir, progress
    )
    qat_config = TrainConfig(recipe="w1a2", epochs=qat_epochs, init=str(fp32_dir), **common)
    qat = train_or_reuse(qat_config, qat_dir, progress)
    _, description = export_run(qat_dir)
    report = verify_run(
        qat_dir, n=200 if quick else 1000, random=64 if quick else 1000, progress=progress
    )
    return {
        "out": str(out),
        "epochs": {"fp32": fp32_epochs, "w1a2": qat_epochs},
        "fp32": fp32,
        "w1a2": qat,
        "deployed_bits": deployed_bits_of(description)["total"],
        "verify": {
            k: report[k] for k in ("checked_tensors", "checked_values", "mismatches", "unexplained")
        },
    }
