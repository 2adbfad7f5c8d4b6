"""Leave-one-known-type-out selection of the unknown-type detector (score + outlier exposure).

No choice about unknown-type detection may look at the held-out types. This module makes every
choice on the known types alone: each known type in turn is moved out of training and acts as a
pseudo-unknown; every candidate training setting (outlier exposure on or off, its outlier kinds
and weight) is trained on the remaining known types, and every score is measured (the fold's
known test crops against all crops of the pseudo-unknown type). Candidates and scores are ranked
by their mean FPR95 over the folds (ties: higher mean AUROC). The real held-out types are
excluded from every fold before any image is read or generated (`load_splits(exclude=...)`).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lowbit.errors import ConfigError
from lowbit.io import atomic_write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One training setting of the detector; the scores are all measured on each candidate."""

    name: str
    oe_weight: float = 0.0
    oe_kinds: tuple[str, ...] = field(default=("cutmix", "mixup", "shuffle", "erase"))


CANDIDATES = (
    Candidate("plain"),
    Candidate("oe_all", 0.5),
    Candidate("oe_mix", 0.5, ("cutmix", "mixup")),
    Candidate("oe_texture", 0.5, ("shuffle", "erase")),
)


@dataclass(frozen=True, kw_only=True)
class SelectionOptions:
    """The budget of each fold's training run: smaller than a final run, the same for all."""

    data: str = "builtin"
    unknown: tuple[str, ...] | None = None  # the real held-out types; None: the data's default
    recipe: str = "fp32"
    epochs: int = 24  # fold models then reach the deployed models' accuracy (90–97 %)
    per_class: int | None = 200
    width: int | None = None
    image_size: int = 32
    crop: bool = True  # crop around the defect mask (TrainConfig.crop)
    seed: int = 0
    folds: tuple[str, ...] | None = None  # pseudo-unknown types; None: every known type


def known_types(options: SelectionOptions) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Returns (known types, real held-out types) of the data, reading no image."""
    from lowbit.data.dataset import _parse_unknown
    from lowbit.data.loaders import class_names_of, scan
    from lowbit.data.synth import BUILTIN_CLASSES, BUILTIN_UNKNOWN

    if options.data == "builtin":
        names, default = BUILTIN_CLASSES, BUILTIN_UNKNOWN
    else:
        names, default = class_names_of(scan(Path(options.data))), ()
    unknown = _parse_unknown(options.unknown, default)
    known = tuple(name for name in names if name not in unknown)
    if len(known) < 3:
        raise ConfigError(
            f"{options.data}: leave-one-type-out needs at least 3 known types, has {list(known)}"
        )
    return known, unknown


def fold_metrics(model, splits) -> dict:
    """Returns {score: {auroc, fpr95}} of a fold's model: known test crops vs pseudo-unknown."""
    from lowbit.train.evaluation import model_outputs, ood_evaluation

    return ood_evaluation(model, splits, *model_outputs(model, splits.test.x))


def rank(per_fold: dict[str, dict[str, dict[str, dict]]]) -> list[dict]:
    """Returns rows {candidate, score, fpr95, auroc, fpr95_folds} sorted best first.

    per_fold[candidate][fold][score] = {"auroc", "fpr95"}.
    """
    rows = []
    for candidate, folds in per_fold.items():
        scores = next(iter(folds.values())).keys()
        for score in scores:
            fprs = [folds[f][score]["fpr95"] for f in folds]
            aurocs = [folds[f][score]["auroc"] for f in folds]
            rows.append(
                {
                    "candidate": candidate,
                    "score": score,
                    "fpr95": statistics.fmean(fprs),
                    "auroc": statistics.fmean(aurocs),
                    "fpr95_folds": dict(zip(folds, fprs)),
                }
            )
    return sorted(rows, key=lambda row: (row["fpr95"], -row["auroc"]))


def fold_splits(options: dict, pseudo: str):
    """Returns the splits of one fold of a finished selection: `options` is selection.json's
    "options" (its held-out types stay excluded), `pseudo` the fold's pseudo-unknown type."""
    from lowbit.data import load_splits

    return load_splits(
        options["data"],
        image_size=options["image_size"],
        crop=options["crop"],
        unknown=[pseudo],
        exclude=options["unknown_excluded"],
        seed=options["seed"],
        per_class=options["per_class"],
    )


def run_selection(
    options: SelectionOptions,
    out: Path,
    candidates: tuple[Candidate, ...] = CANDIDATES,
    *,
    progress: bool = True,
) -> dict:
    """Trains every candidate on every fold under `out`; returns (and writes) selection.json."""
    from lowbit.train import TrainConfig, load_run
    from lowbit.train.reuse import train_or_reuse

    known, unknown = known_types(options)
    folds = options.folds or known
    bad = [name for name in folds if name not in known]
    if bad:
        raise ConfigError(f"folds {bad} are not known types of {options.data}: {list(known)}")
    out = Path(out)
    record = {**options.__dict__, "folds": list(folds), "unknown_excluded": list(unknown)}
    per_fold: dict[str, dict[str, dict]] = {c.name: {} for c in candidates}
    for pseudo in folds:
        splits = fold_splits(record, pseudo)
        for candidate in candidates:
            config = TrainConfig(
                recipe=options.recipe,
                epochs=options.epochs,
                width=options.width,
                image_size=options.image_size,
                crop=options.crop,
                data=options.data,
                per_class=options.per_class,
                unknown=(pseudo,),
                seed=options.seed,
                oe_weight=candidate.oe_weight,
                oe_kinds=candidate.oe_kinds,
            )
            run_dir = out / f"fold_{pseudo}" / candidate.name
            log.info("fold %s (pseudo-unknown), candidate %s", pseudo, candidate.name)
            train_or_reuse(config, run_dir, progress, splits=splits)
            model, _ = load_run(run_dir)
            per_fold[candidate.name][pseudo] = fold_metrics(model, splits)
    ranking = rank(per_fold)
    result = {
        "options": record,
        "candidates": [c.__dict__ for c in candidates],
        "per_fold": per_fold,
        "ranking": ranking,
        "chosen": {"candidate": ranking[0]["candidate"], "score": ranking[0]["score"]},
    }
    atomic_write_json(out / "selection.json", result)
    return result


def format_ranking(result: dict, top: int = 12) -> str:
    """Returns the ranking as a text table (mean over the folds)."""
    lines = [f"{'candidate':<12} {'score':<24} {'FPR95':>6} {'AUROC':>6}"]
    for row in result["ranking"][:top]:
        lines.append(
            f"{row['candidate']:<12} {row['score']:<24} {row['fpr95']:6.3f} {row['auroc']:6.3f}"
        )
    return "\n".join(lines)
