"""Multi-process training: the process group, replica checks and launch train_parallel uses.

`train_parallel(config, run_dir, nproc=N)` (lowbit/train/parallel.py) or a `torchrun` launch.

N processes train one model as if one process trained it with the same global batch:
- every rank holds the data and draws the same epoch order and augmentation (loop.py seeds them
  by (seed, epoch)); rank r keeps the r-th contiguous slice of each global batch, so
  config.batch_size must be a multiple of N (each rank takes batch_size / N samples);
- gradients are averaged by DistributedDataParallel; BatchNorm statistics and Brevitas'
  activation-scale statistics are taken over the global batch (replicas.py);
- rank 0 alone writes config.json, checkpoint.pt and metrics.json (holding the run directory's
  writer lock, lowbit/lock.py), evaluates, logs and shows progress; the other ranks wait at a
  barrier after each write. After every epoch the ranks
  compare digests of all parameters, buffers and quantizer state and stop if any differ.
Backends: gloo, or "cpu:gloo,cuda:nccl" where CUDA is available (the loop trains on the CPU
today; CUDA tensors would go through nccl). Results equal single-process training up to float
summation order (tests/train/test_distributed.py states the measured difference).
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.multiprocessing.spawn import ProcessException
from torch.nn.parallel import DistributedDataParallel

from lowbit.errors import ConfigError, LowbitError
from lowbit.train.replicas import replica_digest, synchronized

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # lowbit.cli's format
# Buffers (BN running statistics, Brevitas' statistics) stay equal by construction, and
# check_replicas would catch it if they did not: no broadcast before every forward.
_NO_BUFFER_BROADCAST = (
    {"forward_sync_buffers": False}  # torch >= 2.13 deprecates broadcast_buffers
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; World() is a single process."""

    rank: int = 0
    size: int = 1
    group: object = None  # a gloo group for lowbit's own collectives, apart from DDP's

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_batch_size(self, batch_size: int) -> None:
        """Raises ConfigError unless the global batch splits evenly over the processes."""
        if batch_size % self.size:
            raise ConfigError(
                f"batch_size={batch_size} is not a multiple of nproc={self.size}: each process "
                f"takes batch_size / nproc samples of every batch; choose a multiple of {self.size}"
            )

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """Returns this rank's contiguous slice of a global batch (all of it for one process)."""
        if self.size == 1:
            return batch
        per_rank = len(batch) // self.size
        return batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def sum(self, values: list[float]) -> list[float]:
        """Returns the sums of `values` over all ranks (float64, exact for counts)."""
        if self.size == 1:
            return values
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total, group=self.group)
        return total.tolist()

    def on_main(self, fn: Callable, *args, **kwargs):
        """Runs fn on rank 0 alone; every rank waits for it and gets its (picklable) result."""
        if self.size == 1:
            return fn(*args, **kwargs)
        result = [fn(*args, **kwargs) if self.is_main else None]
        dist.broadcast_object_list(result, src=0, group=self.group)  # also the barrier
        return result[0]

    @contextmanager
    def replicate(self, model: nn.Module) -> Iterator[nn.Module]:
        """Yields the module to train: `model` itself, or a DDP of it with synchronized stats."""
        if self.size == 1:
            yield model
            return
        with synchronized(model, self.group):
            yield DistributedDataParallel(model, **_NO_BUFFER_BROADCAST)

    def check_replicas(self, model: nn.Module) -> None:
        """Raises RuntimeError (a bug, not a user error) unless all ranks hold the same model."""
        if self.size == 1:
            return
        digests = [None] * self.size
        dist.all_gather_object(digests, replica_digest(model), group=self.group)
        if len(set(digests)) != 1:
            raise RuntimeError(f"rank {self.rank}: model replicas diverged ({digests})")


SINGLE = World()
_GROUPS: dict[int, object] = {}  # id(default group) -> lowbit's gloo group


def current_world() -> World:
    """Returns this process's World: from the initialized process group, else a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return World()
    key = id(dist.group.WORLD)
    if key not in _GROUPS:  # collective: every rank reaches this line in train()
        _GROUPS[key] = dist.new_group(backend="gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), group=_GROUPS[key])


def backend() -> str:
    """Returns the process-group backend: gloo on CPU, nccl for CUDA tensors where CUDA is."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Returns False in a torchrun (or spawned) process other than rank 0."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def process_group() -> Iterator[World]:
    """Joins the process group described by RANK, WORLD_SIZE, MASTER_ADDR/PORT; leaves it after."""
    dist.init_process_group(backend())
    world = current_world()
    if not world.is_main:  # rank-0-only logs: the others still report warnings and errors
        lowbit_logger = logging.getLogger("lowbit")
        lowbit_logger.setLevel(max(logging.WARNING, lowbit_logger.getEffectiveLevel()))
    try:
        yield world
    finally:
        _GROUPS.clear()
        dist.destroy_process_group()


def free_port() -> int:
    """Returns a TCP port free right now on 127.0.0.1 (another process could still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, nproc: int, port: int, setup: dict, fn: Callable, args: tuple, errors):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
    )
    torch.set_num_threads(setup["threads"])
    log_format = LOG_FORMAT if rank == 0 else LOG_FORMAT.replace(":", f"[rank {rank}]:", 1)
    logging.basicConfig(level=setup["log_level"], format=log_format, stream=sys.stderr)
    try:
        with process_group():
            fn(*args)
    except LowbitError as error:
        errors.put(error)  # the parent re-raises it: one line and an exit code, not a traceback
        raise


def launch(nproc: int, fn: Callable, *args) -> None:
    """Runs fn(*args) in nproc new processes that form one process group on this machine.

    fn and args must be picklable (a module-level function). A LowbitError in any process is
    re-raised here; the other processes are stopped.
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"nproc={nproc!r} must be a positive integer")
    context = mp.get_context("spawn")
    errors = context.SimpleQueue()
    setup = {
        "threads": max(1, torch.get_num_threads() // nproc),
        "log_level": logging.getLogger("lowbit").getEffectiveLevel(),
    }
    try:
        mp.spawn(_worker, (nproc, free_port(), setup, fn, args, errors), nprocs=nproc)
    except ProcessException:
        if not errors.empty():
            raise errors.get() from None
        raise
