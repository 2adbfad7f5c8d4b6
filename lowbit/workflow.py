"""Run-directory workflows the CLI, the main job and the benchmarks call: export_run, verify_run.

The orchestration layer above the stages (like cli.py and pipeline.py): it may import any stage,
which no stage may do (DESIGN.md data flow): export_run calibrates the OOD threshold on the
integer graph with the runtime, verify_run drives lowbit.verify.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lowbit.export.api import export_model
from lowbit.io import remove_stale_staging
from lowbit.lock import writer_lock
from lowbit.train.run import splits_for

log = logging.getLogger(__name__)


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
        splits = splits_for(record, run_dir / "config.json")
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
    """Verifies an exported model against the run it came from (model.json's source_run)."""
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
        real = splits_for(record, run_dir / "config.json").test.x
    int_graph = load_graph(export_dir / "model.int.onnx") if ties else None
    inputs = build_inputs(
        description, real, n=n, random=random, ties=ties, seed=seed, int_graph=int_graph
    )
    log.info("verifying on %s", {k: len(v) for k, v in inputs.items()})
    return verify_export(
        model, export_dir, inputs, executors=executors or EXECUTORS, progress=progress
    )
