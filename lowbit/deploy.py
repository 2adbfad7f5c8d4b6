"""Deploying a trained run: its export folder, with the unknown-type threshold calibrated on the
integer graph and the files of the chosen targets, published as one set.

export_with_targets fits the feature-score statistics on the run's training split, calibrates
the threshold on its validation split through the runtime (lowbit.fewshot.openset), exports the
graphs (lowbit.export) and runs the target writers (lowbit.targets) in the export's staging
folder, all under the writer lock of the export folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lowbit.artifacts import CONFIG_FILE
from lowbit.core.scores import DEFAULT_OOD_SCORE, default_views
from lowbit.data import NORMALIZATION, crop_rule
from lowbit.export.api import export_model
from lowbit.fewshot.openset import integer_calibration
from lowbit.io import remove_stale_staging
from lowbit.lock import writer_lock
from lowbit.targets import write_targets
from lowbit.train.run import load_run, splits_for

log = logging.getLogger(__name__)


def export_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    batch: int | None = None,
    ood_score: str | None = None,
    ood_views: int | None = None,
    tpr: float = 0.95,
) -> tuple[Path, dict]:
    """Exports a trained run (see export_with_targets); returns (export folder, model.json)."""
    out_dir, description, _ = export_with_targets(
        run_dir, out_dir, batch=batch, ood_score=ood_score, ood_views=ood_views, tpr=tpr
    )
    return out_dir, description


def export_with_targets(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    targets: tuple[str, ...] = (),
    batch: int | None = None,
    ood_score: str | None = None,
    ood_views: int | None = None,
    tpr: float = 0.95,
) -> tuple[Path, dict, dict[str, list[str]]]:
    """Exports a trained run: fits the feature-score statistics on its training split and
    calibrates the threshold of `ood_score` (None: DEFAULT_OOD_SCORE) on its validation split,
    on the features summed over `ood_views` dihedral views (None: the score's default_views).

    Holds the writer lock of `out_dir` (default: the run directory); the files of `targets`
    (lowbit/targets/__init__.py) are published in one set with the graphs. Returns (export
    folder, model.json, {target: [written paths]}).
    """
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
        score = ood_score or DEFAULT_OOD_SCORE
        views = default_views(score) if ood_views is None else ood_views
        ood = integer_calibration(splits.val.x, score, tpr, fit=fit, views=views)
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
