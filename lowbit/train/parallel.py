"""`train_parallel`: `train` in N processes on this machine, or in the group torchrun started.

The process group, the replica checks and the launch are lowbit/train/distributed.py's; this
module puts the training loop (loop.py, which imports distributed.py) into them.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import torch.distributed

from lowbit.artifacts import METRICS_FILE, read_json
from lowbit.errors import ConfigError
from lowbit.train import distributed, loop
from lowbit.train.config import TrainConfig

log = logging.getLogger(__name__)


def _train_worker(config: TrainConfig, run_dir: str, splits, resume: bool, progress: bool):
    loop.train(config, run_dir, splits=splits, resume=resume, progress=progress)


def train_parallel(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    nproc: int = 1,
    splits=None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Trains like `loop.train` in nproc processes (or in its torchrun group); returns the metrics.

    nproc=1 outside torchrun is plain `train`. `splits` must be picklable to reach new processes.
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"nproc={nproc!r} must be a positive integer")
    if distributed.launched_by_torchrun() or torch.distributed.is_initialized():
        if nproc != 1:
            raise ConfigError(f"nproc={nproc}: already launched by torchrun; leave out --nproc")
        joined = (
            nullcontext() if torch.distributed.is_initialized() else distributed.process_group()
        )
        with joined:
            return loop.train(config, run_dir, splits=splits, resume=resume, progress=progress)
    if nproc == 1:
        return loop.train(config, run_dir, splits=splits, resume=resume, progress=progress)
    distributed.World(size=nproc).check_batch_size(config.batch_size)  # before starting any process
    log.info(
        "training in %d processes (%s), %d samples each per step",
        nproc,
        distributed.backend(),
        config.batch_size // nproc,
    )
    distributed.launch(nproc, _train_worker, config, str(run_dir), splits, resume, progress)
    return read_json(Path(run_dir) / METRICS_FILE, "metrics")
