"""Backbone features for few-shot work: integer codes from the fake-quant model or the runtime.

A quantized backbone's features are integer codes (conv4: the pooled codes of the last block,
flattened; resnet8: their spatial sum). `model_features` reads them off the torch fake-quant
model (value / scale, exact: every value is code x scale), `runtime_features` off the integer
graph's `backbone.features` tensor. Both give the same int64 array, so everything downstream
(prototypes, fine-tuning, accuracies) is the same float64 computation on the same numbers.
An fp32 backbone's features are its float32 outputs.
"""

from __future__ import annotations

import numpy as np

from lowbit.core.feature_scores import FEATURE_TENSOR  # noqa: F401  re-exported


def model_features(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Returns int64 feature codes [N, F] of a quantized model, float32 features of an fp32 one."""
    from lowbit.train.evaluation import feature_codes

    return feature_codes(model, x, batch_size)


def runtime_outputs(runtime, x: np.ndarray, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Returns (float64 logits [N, K], int64 feature codes [N, F]) from a Runtime."""
    logits, features = [], []
    for start in range(0, len(x), batch_size):
        out = runtime.run(x[start : start + batch_size], outputs=[FEATURE_TENSOR])
        logits.append(out["logits"])
        features.append(out[FEATURE_TENSOR].astype(np.int64))
    return np.concatenate(logits), np.concatenate(features)


def runtime_view_outputs(
    runtime,
    x: np.ndarray,
    views: int,
    batch_size: int = 128,
    *,
    first: np.ndarray | None = None,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Returns (float64 logits of the images [N, K], int64 feature codes [N, F] summed over
    `views` dihedral views, lowbit.core.views) from a Runtime. `first`: the images' own feature
    codes when the caller already has them (view 0 is not run again; the logits are then None)."""
    from lowbit.core.views import view_outputs

    known = None if first is None else (None, np.asarray(first).astype(np.int64))
    run = lambda images: runtime_outputs(runtime, images, batch_size)  # noqa: E731
    return view_outputs(run, x, views, first=known)


def runtime_features(runtime, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Returns int64 feature codes [N, F] from a lowbit.runtime.Runtime of model.int.onnx."""
    return runtime_outputs(runtime, x, batch_size)[1]


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Returns float64 rows of unit length (an all-zero row stays zero)."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.sqrt((features**2).sum(axis=-1, keepdims=True))
    return features / np.maximum(norms, 1e-12)


def prototype(features: np.ndarray) -> np.ndarray:
    """Returns the imprinted class weight: mean of the L2-normalized features (Qi et al. 2018)."""
    return l2_normalize(features).mean(axis=0)
