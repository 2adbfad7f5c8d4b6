"""The QAT loop: `train(config, run_dir)`, one plain function. No trainer framework.

Every epoch draws its batch order and augmentation from its own generator seeded by
(seed, epoch), so a run resumed from a checkpoint sees exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import math
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lowbit.artifacts import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, read_json
from lowbit.core.scores import DEFAULT_OOD_VIEWS
from lowbit.errors import ConfigError, DataError
from lowbit.io import make_dir, remove_stale_temps
from lowbit.lock import writer_lock
from lowbit.models import ModelConfig, build_model
from lowbit.quant.recipes import get_recipe
from lowbit.train.checkpoint import (
    init_from_run,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
    set_rng_state,
)
from lowbit.train.config import TrainConfig
from lowbit.train.distributed import SINGLE, World, current_world
from lowbit.train.evaluation import evaluate, split_accuracy
from lowbit.train.losses import SCALE_INVARIANT_LOSSES, make_loss, with_distillation
from lowbit.train.outliers import make_outliers, uniform_loss
from lowbit.train.run import (
    check_same_data,
    check_version,
    run_record,
    write_json,
)

logger = logging.getLogger(__name__)


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Returns the learning rate of `step`: cosine decay to 0, times a linear warm-up ramp."""
    decay = 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps)))
    ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    return base_lr * decay * ramp


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Returns the generator of one epoch's batch order and augmentation."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Returns `x` [N, C, H, W] with random horizontal flips and shifts of up to max_shift px.

    Shifted-in border pixels repeat the edge (replicate padding), so no black frame appears.
    """
    n, _, height, width = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if max_shift <= 0:
        return x
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    padded = F.pad(x, (max_shift,) * 4, mode="replicate").permute(0, 2, 3, 1)
    rows = torch.arange(height)[None, :] + max_shift + shifts[:, :1]
    cols = torch.arange(width)[None, :] + max_shift + shifts[:, 1:]
    batch = torch.arange(n)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Turns on torch's deterministic algorithms (warn where none exists), then restores."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def learns_scale(config: TrainConfig) -> bool:
    """True when the run's cosine scale is a trained parameter.

    `learn_scale` with a scale-invariant loss (LogitNorm) and no teacher keeps the scale fixed:
    its true gradient is 0, and AdamW would turn the float rounding noise left in its place into
    steps of a full learning rate. config.json's "model" records what was built.
    """
    if not config.learn_scale:
        return False
    if config.loss in SCALE_INVARIANT_LOSSES and config.teacher is None:
        logger.warning(
            "learn_scale: loss %r does not depend on the cosine scale; it stays at %g",
            config.loss,
            config.cosine_scale,
        )
        return False
    return True


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Returns SGD (Nesterov) or AdamW; weight decay only on conv and head weights (ndim >= 2).

    BN affine parameters and quantizer scales (log2 domain for power-of-two scales) are not
    decayed: pulling a log-scale toward 0 would pull the scale toward 1.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    nesterov = config.momentum > 0
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=nesterov)


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    # drop the last partial batch: a batch of one breaks BatchNorm on 1x1 feature maps
    return max(1, num_samples // batch_size)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    *,
    epoch: int,
    step: int,
    progress: bool,
    world: World = SINGLE,
    teacher: nn.Module | None = None,
) -> tuple[int, dict]:
    """Runs one epoch of optimizer steps; returns (step after it, {"loss", "accuracy"}).

    With a `teacher` (eval mode, frozen), loss_fn takes its logits as a third argument.
    """
    x_all, y_all = data
    batch_size = min(config.batch_size, len(y_all))
    steps = steps_per_epoch(len(y_all), config.batch_size)
    total_steps = steps * config.epochs
    generator = epoch_generator(config.seed, epoch)
    order = torch.randperm(len(y_all), generator=generator)
    max_shift = config.image_size // 16 if config.augment else 0
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm(
        range(steps),
        desc=f"epoch {epoch + 1}/{config.epochs}",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    )
    for index in bar:
        batch = order[index * batch_size : (index + 1) * batch_size]
        x, y = x_all[batch], y_all[batch]
        if config.augment:
            x = augment(x, generator, max_shift)
        x, y = world.shard(x), world.shard(y)  # this rank's slice of the global batch
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, total_steps, config.lr, config.warmup_steps)
        outliers = None
        if config.oe_weight > 0:
            count = max(1, round(config.oe_fraction * len(y)))
            outliers = make_outliers(x, y, config.oe_kinds, count, generator)
            # one forward pass: BatchNorm and the quantizers' statistics see both, as in OE
            logits_all = model(torch.cat([x, outliers]))
            logits, outlier_logits = logits_all[: len(y)], logits_all[len(y) :]
        else:
            logits = model(x)
        if teacher is None:
            loss = loss_fn(logits, y)
        else:
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = loss_fn(logits, y, teacher_logits)
        if outliers is not None:
            loss = loss + config.oe_weight * uniform_loss(outlier_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
    bar.close()
    loss_sum, correct, seen = world.sum([loss_sum, correct, seen])
    return step, {"loss": loss_sum / seen, "accuracy": correct / seen}


def load_data(config: TrainConfig):  # -> lowbit.data.Splits
    """Returns the Splits of config.data (imported here: lowbit.data is heavy)."""
    from lowbit.data import load_splits

    unknown = list(config.unknown) if config.unknown is not None else None
    return load_splits(
        config.data,
        image_size=config.image_size,
        crop=config.crop,
        unknown=unknown,
        seed=config.seed,
        per_class=config.per_class,
    )


def _load_teacher(config: TrainConfig, class_names: list[str]) -> nn.Module | None:
    """Returns the frozen eval-mode teacher model of config.teacher, or None."""
    if config.teacher is None:
        return None
    from lowbit.train.run import load_run

    teacher, record = load_run(Path(config.teacher))
    if list(record.get("class_names", [])) != list(class_names):
        raise ConfigError(
            f"teacher run {config.teacher}: its classes {record.get('class_names')} differ from "
            f"this run's {list(class_names)}; distill from a run on the same data"
        )
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


def _check_splits(splits, config: TrainConfig) -> None:
    if len(splits.train.y) == 0:
        raise DataError(f"data {config.data!r}: the train split is empty")
    size = splits.train.x.shape[-1]
    if size != config.image_size:
        raise DataError(
            f"data {config.data!r}: images are {size} px, config.image_size is {config.image_size}"
        )


def _resume(run_dir: Path, config: TrainConfig, model: nn.Module, splits) -> dict | None:
    """Loads run_dir's checkpoint into `model`; returns it, or None to start from epoch 0.

    A run killed before its first checkpoint resumes from the beginning: that is exactly what
    the uninterrupted run computed. Only a run directory that does not exist is an error.
    """
    path = run_dir / CHECKPOINT_FILE
    if not run_dir.is_dir():  # train() checks it before the lock would create the folder
        raise ConfigError(f"{path}: nothing to resume; train without resume first")
    if not path.is_file() and not (run_dir / CONFIG_FILE).is_file():
        logger.warning("%s: no checkpoint yet, starting from the beginning", run_dir)
        return None
    record = read_json(run_dir / CONFIG_FILE, "config")
    check_version(record, run_dir / CONFIG_FILE)
    saved = TrainConfig.with_defaults(record.get("train") or {})
    current = config.to_dict()
    changed = sorted(key for key in current if saved.get(key) != current[key])
    if changed:
        raise ConfigError(
            f"{run_dir / CONFIG_FILE}: resume needs the same config; differs in {changed}"
        )
    check_same_data(record, splits, run_dir / CONFIG_FILE)
    if not path.is_file():
        logger.warning("%s: no checkpoint yet, starting from the beginning", run_dir)
        return None
    checkpoint = load_checkpoint(path)
    load_model_state(model, checkpoint, path)
    return checkpoint


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    splits=None,
    resume: bool = False,
    progress: bool = True,
    ood_views: int = DEFAULT_OOD_VIEWS,
) -> dict:
    """Trains per `config` into run_dir (config.json, checkpoint.pt, metrics.json); returns metrics.

    `splits` (a lowbit.data.Splits or any object with .train/.val/.test/.ood ArraySets and
    .class_names) replaces loading config.data. `resume` continues from run_dir's checkpoint and
    ends with the same weights as an uninterrupted run. `ood_views`: the view count of the view
    scores in metrics.json (evaluate; 1 leaves them out, which saves V - 1 forward passes of
    every train, test and unknown-type image).
    """
    config = config.resolved()
    run_dir = Path(run_dir)
    splits = splits if splits is not None else load_data(config)
    _check_splits(splits, config)  # before the run directory exists: a bad input leaves nothing
    world = current_world()  # one process, or this rank of a distributed run (distributed.py)
    world.check_batch_size(min(config.batch_size, len(splits.train.y)))
    seed_everything(config.seed)
    recipe = get_recipe(config.recipe, **config.recipe_overrides)
    model_config = ModelConfig(
        backbone=config.backbone,
        head=config.head,
        num_classes=len(splits.class_names),
        width=config.width,
        image_size=config.image_size,
        cosine_scale=config.cosine_scale,
        learn_scale=learns_scale(config),
    )
    model = build_model(recipe, model_config)
    if resume and not run_dir.is_dir():
        raise ConfigError(
            f"{run_dir / CHECKPOINT_FILE}: nothing to resume; train without resume first"
        )
    # one writer per run directory: rank 0 writes, so rank 0 holds the lock (lowbit/lock.py)
    with writer_lock(run_dir) if world.is_main else nullcontext():
        checkpoint = _resume(run_dir, config, model, splits) if resume else None
        make_dir(run_dir)
        # a killed run's half-written temp files
        removed = world.on_main(remove_stale_temps, run_dir)
        if removed:
            logger.warning("%s: removed temp files of an interrupted write: %s", run_dir, removed)
        # Built after loading: Brevitas re-creates its quantizers (new scale Parameters) on
        # load_state_dict, and an optimizer built before would update the discarded ones.
        optimizer = make_optimizer(model, config)
        start_epoch, step = 0, 0
        if checkpoint is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
            set_rng_state(checkpoint["rng"])
            start_epoch, step = int(checkpoint["epoch"]), int(checkpoint["step"])
            logger.info("resuming %s after epoch %d (step %d)", run_dir, start_epoch, step)
        else:
            if config.init is not None:
                init_from_run(model, Path(config.init))
            unknown_names = list(getattr(splits, "unknown_names", []) or [])
            from lowbit.data import splits_fingerprint  # heavy: imported when a run starts

            record = run_record(
                config,
                recipe,
                model_config,
                splits.class_names,
                unknown_names,
                config.data,
                splits_fingerprint(splits),
            )
            world.on_main(write_json, run_dir / CONFIG_FILE, record)
        data = (torch.from_numpy(splits.train.x), torch.from_numpy(splits.train.y))
        loss_fn = make_loss(config.loss, config.tau)
        teacher = _load_teacher(config, list(splits.class_names))
        if teacher is not None:
            loss_fn = with_distillation(loss_fn, config.distill_weight, config.distill_temperature)
        progress = progress and world.is_main
        with deterministic_algorithms(), world.replicate(model) as replica:
            for epoch in range(start_epoch, config.epochs):
                step, stats = train_epoch(
                    replica,
                    optimizer,
                    loss_fn,
                    data,
                    config,
                    epoch=epoch,
                    step=step,
                    progress=progress,
                    world=world,
                    teacher=teacher,
                )
                world.check_replicas(model)
                val_accuracy = split_accuracy(model, splits.val) if world.is_main else None
                logger.info(
                    "epoch %d/%d: loss %.4f, train accuracy %.3f, val accuracy %s",
                    epoch + 1,
                    config.epochs,
                    stats["loss"],
                    stats["accuracy"],
                    "n/a" if val_accuracy is None else f"{val_accuracy:.3f}",
                )
                world.on_main(
                    save_checkpoint,
                    run_dir / CHECKPOINT_FILE,
                    model,
                    optimizer,
                    step=step,
                    epoch=epoch + 1,
                )
            metrics = world.on_main(evaluate, model, splits, config=config, views=ood_views)
        world.on_main(write_json, run_dir / METRICS_FILE, metrics)
        return metrics
