"""The two containers the data stages pass around: a raw set of images and a model-ready set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class RawSet:
    """Images at source resolution with their defect masks and labels.

    `images[i]` is uint8 HxWx3 (sizes may differ between images), `masks[i]` is bool HxW or
    None (no mask: the whole image is the defect's context), `labels[i]` indexes
    `class_names`, and `paths[i]` names the source file (relative, for generated data).
    """

    images: Sequence[np.ndarray]
    masks: Sequence[np.ndarray | None]
    labels: np.ndarray
    class_names: tuple[str, ...]
    paths: list[str]

    def __post_init__(self) -> None:
        n = len(self.labels)
        assert len(self.images) == n and len(self.masks) == n and len(self.paths) == n

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ArraySet:
    """Model-ready arrays: `x` float32 [N, 3, S, S] normalized, `y` int64 [N].

    Wrap in torch with `TensorDataset(torch.from_numpy(s.x), torch.from_numpy(s.y))`.
    """

    x: np.ndarray
    y: np.ndarray
    paths: list[str] | None = None

    def __post_init__(self) -> None:
        assert self.x.ndim == 4 and self.x.dtype == np.float32, (self.x.shape, self.x.dtype)
        assert self.y.shape == (len(self.x),) and self.y.dtype == np.int64
        assert self.paths is None or len(self.paths) == len(self.x)

    def __len__(self) -> int:
        return len(self.y)
