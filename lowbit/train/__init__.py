"""QAT training: losses, OOD metrics, the training loop, checkpoints and run directories."""

from lowbit.train.checkpoint import init_from_run, load_checkpoint
from lowbit.train.config import TrainConfig
from lowbit.train.evaluate import evaluate, predict_logits
from lowbit.train.loop import train
from lowbit.train.losses import DEFAULT_TAU, LOSSES, cross_entropy, logitnorm_loss
from lowbit.train.metrics import ood_metrics
from lowbit.train.run import load_run

__all__ = [
    "DEFAULT_TAU",
    "LOSSES",
    "TrainConfig",
    "cross_entropy",
    "evaluate",
    "init_from_run",
    "load_checkpoint",
    "load_run",
    "logitnorm_loss",
    "ood_metrics",
    "predict_logits",
    "train",
]
