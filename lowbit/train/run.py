"""A run directory's JSON files (config.json, metrics.json) and `load_run`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import brevitas
import numpy as np
import torch

import lowbit
from lowbit.artifacts import CHECKPOINT_FILE, CONFIG_FILE, read_json
from lowbit.errors import ConfigError
from lowbit.io import atomic_write_bytes
from lowbit.models import LowbitModel, ModelConfig, build_model
from lowbit.quant.recipes import Recipe, recipe_from_dict
from lowbit.train.checkpoint import load_checkpoint, load_model_state
from lowbit.train.config import TrainConfig


def versions() -> dict[str, str]:
    """Returns the versions that shape a run's numbers."""
    return {
        "lowbit": lowbit.__version__,
        "torch": torch.__version__,
        "brevitas": brevitas.__version__,
        "numpy": np.__version__,
    }


def write_json(path: Path, data: dict) -> None:
    """Writes `data` as indented strict JSON (NaN is an error, not a token), atomically."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


def run_record(
    config: TrainConfig,
    recipe: Recipe,
    model_config: ModelConfig,
    class_names: Sequence[str],
    unknown_names: Sequence[str],
    data_source: str,
    data_fingerprint: str | None = None,
) -> dict:
    """Returns the contents of config.json: everything needed to rebuild and explain the run."""
    return {
        "train": config.to_dict(),
        "recipe": recipe.to_dict(),
        "model": model_config.to_dict(),
        "class_names": list(class_names),
        "unknown_names": list(unknown_names),
        "data": data_source,
        "data_fingerprint": data_fingerprint,  # lowbit.data.splits_fingerprint of its splits
        "seed": config.seed,
        "versions": versions(),
    }


def _major(version: str) -> str:
    return str(version).split(".")[0]


def check_version(record: dict, path: Path) -> None:
    """Raises ConfigError when config.json comes from another lowbit major version."""
    saved = record.get("versions", {}).get("lowbit")
    if saved is None:
        raise ConfigError(f"{path}: no versions.lowbit field; not a lowbit run config")
    if _major(saved) != _major(lowbit.__version__):
        raise ConfigError(
            f"{path}: written by lowbit {saved}, this is lowbit {lowbit.__version__}; "
            "retrain the run or use a matching lowbit version"
        )


def load_run(run_dir: Path) -> tuple[LowbitModel, dict]:
    """Returns (model in eval mode with the run's weights, config.json contents)."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    record = read_json(path, "config")
    check_version(record, path)
    try:
        recipe = recipe_from_dict(record["recipe"])
        model_config = ModelConfig(**record["model"])
    except KeyError as error:
        raise ConfigError(f"{path}: missing field {error}") from None
    except TypeError as error:
        raise ConfigError(
            f"{path}: model fields do not match this lowbit version ({error})"
        ) from None
    model = build_model(recipe, model_config)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    load_model_state(model, load_checkpoint(checkpoint_path), checkpoint_path)
    model.eval()
    return model, record


def check_same_data(record: dict, splits, where: Path | str) -> None:
    """Raises ConfigError when `splits` are not the data the run of `record` was trained on.

    Runs written before config.json held a data_fingerprint cannot be checked and pass.
    """
    from lowbit.data import splits_fingerprint

    saved = record.get("data_fingerprint")
    if saved is not None and saved != splits_fingerprint(splits):
        raise ConfigError(
            f"{where}: data {record.get('data', 'builtin')!r} differ from the data this run was "
            "trained on (data_fingerprint): another lowbit version's built-in set, or files "
            "added, removed or changed in the folder; retrain into a new run directory"
        )


def splits_for(record: dict, where: Path | str = CONFIG_FILE):
    """Returns the data splits a run was trained on, rebuilt from its config.json record;
    ConfigError (naming `where`) when the data no longer match the run's data_fingerprint."""
    from lowbit.data import load_splits

    train = record.get("train", {})
    splits = load_splits(
        record.get("data", "builtin"),
        image_size=record["model"]["image_size"],
        crop=train.get("crop", True),
        unknown=train.get("unknown"),
        seed=record.get("seed", 0),
        per_class=train.get("per_class"),
    )
    check_same_data(record, splits, where)
    return splits
