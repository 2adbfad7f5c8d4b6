"""QAT training: losses, OOD metrics, the training loop, checkpoints and run directories.

The names below load on first use (PEP 562 module __getattr__): importing a torch-free module
of this package, such as lowbit.train.metrics, then imports no torch.
"""

from __future__ import annotations

import importlib

# public name -> the module of this package that defines it
_HOMES = {
    "DEFAULT_TAU": "losses",
    "LOSSES": "losses",
    "TrainConfig": "config",
    "cross_entropy": "losses",
    "evaluate": "evaluation",
    "init_from_run": "checkpoint",
    "is_trained": "reuse",
    "load_checkpoint": "checkpoint",
    "load_run": "run",
    "logitnorm_loss": "losses",
    "ood_metrics": "metrics",
    "predict_logits": "evaluation",
    "train": "loop",
    "train_or_reuse": "reuse",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
