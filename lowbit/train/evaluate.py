"""evaluate(model, splits): test accuracy, per-class accuracy, confusion matrix and OOD metrics.

metrics.json keys (stable, snake_case): recipe, head, loss, tau, epochs, seed, model_bits,
accuracy, val_accuracy, per_class_accuracy, confusion_matrix, class_names, num_test, num_ood,
ood ({msp, max_logit, energy} x {auroc, fpr95}, or null without OOD samples).
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.models import LowbitModel
from lowbit.train.config import TrainConfig
from lowbit.train.metrics import accuracy, confusion_matrix, ood_metrics, per_class_accuracy

try:  # the lead's accounting, once it exists; until then ours
    from lowbit.models.accounting import model_bits
except ImportError:
    from lowbit.train.accounting import model_bits


def predict_logits(model: LowbitModel, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Returns float32 logits [N, K] of `x` [N, 3, S, S] with the model in eval mode."""
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            outputs.append(model(torch.from_numpy(x[start : start + batch_size])).numpy())
    if not outputs:
        return np.zeros((0, model.config.num_classes), dtype=np.float32)
    return np.concatenate(outputs)


def split_accuracy(model: LowbitModel, split) -> float | None:
    if split is None or len(split.y) == 0:
        return None
    return accuracy(split.y, predict_logits(model, split.x).argmax(1))


def evaluate(model: LowbitModel, splits, *, config: TrainConfig | None = None) -> dict:
    """Returns the metrics.json dict for `model` on splits.test (and splits.ood, splits.val)."""
    class_names = list(splits.class_names)
    logits = predict_logits(model, splits.test.x)
    pred = logits.argmax(1)
    ood = getattr(splits, "ood", None)
    has_ood = ood is not None and len(ood.x) > 0 and len(logits) > 0
    return {
        "recipe": model.recipe.name,
        "head": model.config.head,
        "loss": config.loss if config else None,
        "tau": config.tau if config and config.loss == "logitnorm" else None,
        # the cosine head's logit scale as trained (learned with --learn-scale); None: linear
        "cosine_scale": float(model.head.scale) if model.config.head == "cosine" else None,
        "epochs": config.epochs if config else None,
        "seed": config.seed if config else None,
        "model_bits": int(model_bits(model)),
        "accuracy": accuracy(splits.test.y, pred) if len(pred) else None,
        "val_accuracy": split_accuracy(model, getattr(splits, "val", None)),
        "per_class_accuracy": per_class_accuracy(splits.test.y, pred, class_names),
        "confusion_matrix": confusion_matrix(splits.test.y, pred, len(class_names)).tolist(),
        "class_names": class_names,
        "num_test": int(len(pred)),
        "num_ood": int(len(ood.x)) if ood is not None else 0,
        "ood": ood_metrics(logits, predict_logits(model, ood.x)) if has_ood else None,
    }
