"""evaluate(model, splits): test accuracy, per-class accuracy, confusion matrix and OOD metrics.

metrics.json keys (stable, snake_case): recipe, head, loss, tau, epochs, seed, parameter_bits
(lowbit.models.accounting; before format 2 of model.json this key was `model_bits`),
accuracy, val_accuracy, per_class_accuracy, confusion_matrix, class_names, num_test, num_ood,
ood ({score} x {auroc, fpr95} for every score of lowbit.core.scores.SCORES, and for the feature
scores of VIEW_SCORES on the features summed over DEFAULT_OOD_VIEWS dihedral views as
"<score>@8views"; null without OOD samples) and ood_default (the detector an export deploys by
default, "rel_mahalanobis@8views"). Feature scores are fitted on the training split's feature
codes (summed over the views for the view detectors), exactly as an export fits them.
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.core.feature_scores import fit_feature_stats
from lowbit.core.scores import DEFAULT_OOD_SCORE, DEFAULT_OOD_VIEWS, detector_name
from lowbit.core.views import view_outputs
from lowbit.models import LowbitModel
from lowbit.models.accounting import parameter_bits
from lowbit.train.config import TrainConfig
from lowbit.train.metrics import (
    accuracy,
    confusion_matrix,
    ood_metrics,
    per_class_accuracy,
    view_score_metrics,
)


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


def model_outputs(
    model: LowbitModel, x: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (float32 logits [N, K], feature codes [N, F]) from one forward pass.

    A quantized backbone's features are codes x scale exactly, so value / scale rounds to the
    integer graph's `backbone.features` (conv4: the last block's pooled codes, flattened;
    resnet8: their spatial sum): int64 codes. An fp32 backbone's features stay float32.
    """
    model.eval()
    logits, codes = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            features = model.features(torch.from_numpy(x[start : start + batch_size]))
            logits.append(model.head(features).numpy())
            codes.append(features_as_codes(model, features))
    if not codes:
        dtype = np.float32 if model.recipe.is_float else np.int64
        empty = np.zeros((0, model.feature_dim()), dtype=dtype)
        return np.zeros((0, model.config.num_classes), dtype=np.float32), empty
    return np.concatenate(logits), np.concatenate(codes)


def features_as_codes(model: LowbitModel, features: torch.Tensor) -> np.ndarray:
    """Returns the backbone's output `features` as model_outputs gives them: int64 codes for a
    quantized backbone (value / scale, exact), float32 for an fp32 one."""
    from lowbit.models.backbones import Conv4
    from lowbit.quant.layers import quant_scale

    if model.recipe.is_float:
        return features.detach().numpy()
    last = model.backbone.blocks[-1]
    scale = quant_scale(last.act if isinstance(model.backbone, Conv4) else last.act_out)
    return torch.round(features.detach() / scale).numpy().astype(np.int64)


def feature_codes(model: LowbitModel, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Returns the feature codes of `model_outputs`."""
    return model_outputs(model, x, batch_size)[1]


def ood_evaluation(
    model: LowbitModel,
    splits,
    logits_in: np.ndarray,
    features_in: np.ndarray,
    views: int = DEFAULT_OOD_VIEWS,
) -> dict | None:
    """Returns metrics.json's "ood": every score's AUROC and FPR95, splits.test (whose logits
    and features are given) vs splits.ood; feature scores fitted on splits.train. With `views`
    > 1 the scores of VIEW_SCORES are measured again on the features summed over that many
    dihedral views (lowbit.core.views), fitted the same way: "<score>@<views>views"."""
    ood = getattr(splits, "ood", None)
    if ood is None or len(ood.x) == 0 or len(logits_in) == 0:
        return None
    train_logits, train_features = model_outputs(model, splits.train.x)
    stats = fit_feature_stats(train_features, splits.train.y, len(splits.class_names), train_logits)
    logits_out, features_out = model_outputs(model, ood.x)
    metrics = ood_metrics(logits_in, logits_out, features_in, features_out, stats)
    if views > 1:  # view 0's features are those above
        first = {"train": train_features, "test": features_in, "ood": features_out}

        def summed(split: str) -> np.ndarray:
            run = lambda images: model_outputs(model, images)  # noqa: E731
            x = getattr(splits, split).x
            return view_outputs(run, x, views, first=(None, first[split]))[1]

        metrics.update(view_score_metrics(splits, summed, views))
    return metrics


def split_accuracy(model: LowbitModel, split) -> float | None:
    if split is None or len(split.y) == 0:
        return None
    return accuracy(split.y, predict_logits(model, split.x).argmax(1))


def evaluate(
    model: LowbitModel,
    splits,
    *,
    config: TrainConfig | None = None,
    views: int = DEFAULT_OOD_VIEWS,
) -> dict:
    """Returns the metrics.json dict for `model` on splits.test (and splits.ood, splits.val);
    the view scores on `views` views (1: without them)."""
    class_names = list(splits.class_names)
    logits, features = model_outputs(model, splits.test.x)
    pred = logits.argmax(1)
    ood = getattr(splits, "ood", None)
    return {
        "recipe": model.recipe.name,
        "head": model.config.head,
        "loss": config.loss if config else None,
        "tau": config.tau if config and config.loss == "logitnorm" else None,
        # the cosine head's logit scale as trained (learned with --learn-scale); None: linear
        "cosine_scale": float(model.head.scale) if model.config.head == "cosine" else None,
        "epochs": config.epochs if config else None,
        "seed": config.seed if config else None,
        "parameter_bits": int(parameter_bits(model)),
        "accuracy": accuracy(splits.test.y, pred) if len(pred) else None,
        "val_accuracy": split_accuracy(model, getattr(splits, "val", None)),
        "per_class_accuracy": per_class_accuracy(splits.test.y, pred, class_names),
        "confusion_matrix": confusion_matrix(splits.test.y, pred, len(class_names)).tolist(),
        "class_names": class_names,
        "num_test": int(len(pred)),
        "num_ood": int(len(ood.x)) if ood is not None else 0,
        "ood": ood_evaluation(model, splits, logits, features, views),
        "ood_default": detector_name(DEFAULT_OOD_SCORE, DEFAULT_OOD_VIEWS),
    }
