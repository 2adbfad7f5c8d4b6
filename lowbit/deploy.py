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
from lowbit.core.scores import (
    DEFAULT_OOD_SCORE,
    DEFAULT_OOD_VIEWS,
    check_detector,
    default_views,
)
from lowbit.data import NORMALIZATION, crop_rule
from lowbit.errors import ConfigError
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
    splits=None,
) -> tuple[Path, dict]:
    """Exports a trained run (see export_with_targets); returns (export folder, model.json)."""
    out_dir, description, _ = export_with_targets(
        run_dir,
        out_dir,
        batch=batch,
        ood_score=ood_score,
        ood_views=ood_views,
        tpr=tpr,
        splits=splits,
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
    splits=None,
) -> tuple[Path, dict, dict[str, list[str]]]:
    """Exports a trained run: fits the feature-score statistics on its training split and
    calibrates the threshold of `ood_score` (None: DEFAULT_OOD_SCORE) on its validation split,
    on the features summed over `ood_views` dihedral views (None: the score's default_views).

    Holds the writer lock of `out_dir` (default: the run directory); the files of `targets`
    (lowbit/targets/__init__.py) are published in one set with the graphs. `splits`: the run's
    data when the caller has them loaded (default: rebuilt from its config.json). Returns (export
    folder, model.json, {target: [written paths]}).
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    score = ood_score or DEFAULT_OOD_SCORE
    views = default_views(score) if ood_views is None else ood_views
    try:  # before any work: a score that reads one view given several, an unknown count
        check_detector(score, views)
    except ValueError as error:
        raise ConfigError(str(error)) from None
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
        if splits is None:
            splits = splits_for(record, run_dir / CONFIG_FILE)
        # calibrated on the integer graph's own logits: the runtime then keeps exactly `tpr` of val
        fit = (splits.train.x, splits.train.y, len(record["class_names"]))
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


def measure_view_scores(
    run_dir: str | Path,
    export_dir: str | Path | None = None,
    views: int = DEFAULT_OOD_VIEWS,
    *,
    splits=None,
) -> dict:
    """Adds the view scores ("<score>@<views>views") to run_dir's metrics.json, measured through
    the integer graph of its export (default: the run directory); returns the metrics.

    As `lowbit.train.evaluate` measures them, but on the integer runtime's feature codes: the
    statistics are fitted on the training split's codes summed over the views (as an export fits
    them), then the known test crops are scored against the held-out types. The fake-quant
    model's codes are the same integers, so the numbers are exactly evaluate's; the runtime
    computes them several times faster, which keeps `lowbit run` short. When the export's own
    statistics were fitted on this run's training split over the same views (export_run's
    default), they are read from model.ood.npz instead of running the training crops again: the
    same function of the same codes. A run without held-out types, or whose metrics already hold
    these scores, is returned unchanged. `splits`: the run's data when the caller has it loaded
    (default: loaded from its config.json).
    """
    from lowbit.artifacts import METRICS_FILE, read_json
    from lowbit.core.scores import VIEW_SCORES, detector_name
    from lowbit.fewshot.features import runtime_view_outputs
    from lowbit.io import atomic_write_json
    from lowbit.manifest import read_description
    from lowbit.runtime import Runtime
    from lowbit.train.metrics import view_score_metrics

    run_dir = Path(run_dir)
    export_dir = Path(export_dir) if export_dir else run_dir
    metrics = read_json(run_dir / METRICS_FILE, "metrics")
    names = {detector_name(name, views) for name in VIEW_SCORES}
    if not metrics.get("ood") or names <= set(metrics["ood"]):
        return metrics
    description = read_description(export_dir)
    runtime = Runtime(export_dir / description["files"]["int"])
    record = read_json(run_dir / CONFIG_FILE, "config")
    splits = splits if splits is not None else splits_for(record, run_dir / CONFIG_FILE)
    metrics["ood"].update(
        view_score_metrics(
            splits,
            lambda split: runtime_view_outputs(runtime, getattr(splits, split).x, views)[1],
            views,
            stats=training_stats(export_dir, description, run_dir, views, len(splits.train.x)),
        )
    )
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    return metrics


def training_stats(
    export_dir: Path, description: dict, run_dir: Path, views: int, train_images: int
) -> dict | None:
    """Returns the export's feature statistics if they are those of `run_dir`'s training split
    summed over `views` views (what view_score_metrics would fit), else None."""
    from lowbit.core.feature_scores import load_export_stats
    from lowbit.fewshot.predict import export_views
    from lowbit.manifest import source_run_dir

    entry = (description.get("ood") or {}).get("stats") or {}
    if (
        source_run_dir(export_dir, description) != run_dir.resolve()
        or entry.get("fitted_on") != "train"
        or entry.get("fitted_images") != train_images
        or export_views(description, export_dir) != views
    ):
        return None
    return load_export_stats(export_dir, description)
