"""Train or reuse: a run directory whose metrics.json records a finished run of the same config
on the same data is reused as it is; any other is trained, resumed from its checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lowbit.artifacts import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE

log = logging.getLogger(__name__)


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


def train_or_reuse(
    config, run_dir: Path, progress: bool = True, *, splits=None, ood_views: int | None = None
) -> dict:
    """Returns run_dir's metrics: reused when finished with this config, else trained (resumed
    from its checkpoint when one exists). `splits` replaces loading config.data; `ood_views`
    (None: train's default) is train's."""
    from lowbit.train import train

    if is_trained(run_dir, config, splits):
        log.info("reusing finished run %s", run_dir)
        return json.loads((run_dir / METRICS_FILE).read_text())
    resume = (run_dir / CHECKPOINT_FILE).is_file() and (run_dir / CONFIG_FILE).is_file()
    views = {} if ood_views is None else {"ood_views": ood_views}
    return train(config, run_dir, splits=splits, resume=resume, progress=progress, **views)
