"""Synthetic outliers made from known-type training crops only, for outlier exposure (OE).

Outlier exposure (Hendrycks et al. 2019, arXiv 1812.04606) trains the head to give a flat
distribution on inputs from outside the known classes. Here no outside data exist, so the
outliers are built from the current training batch alone (in the spirit of ASCOOD and of
treating mixed samples as outliers, Zhu et al. 2023 "OpenMix"): every builder takes the batch's
images and labels and nothing else, so a held-out type can never leak into training.

- `cutmix`: a rectangle (25-60 % of the area) of a crop of another known type pasted into a crop:
  two different defects in one part.
- `mixup`: a 35-65 % blend of two crops of different known types.
- `shuffle`: the crop cut into a 4x4 grid of patches and the patches permuted: the surface and
  the defect's local texture stay, its shape is destroyed.
- `erase`: the crop's central half (where crops centre the defect) replaced by a shifted copy
  of the crop's own border: texture with the defect removed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OUTLIER_KINDS = ("cutmix", "mixup", "shuffle", "erase")


def _partners(y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Returns for each sample the index of a sample of another class (itself if none exists)."""
    n = len(y)
    partner = torch.randperm(n, generator=generator)
    for _ in range(4):  # redraw same-class pairs a few times; the rest fall back below
        same = y[partner] == y
        if not same.any():
            break
        partner[same] = torch.randint(0, n, (int(same.sum()),), generator=generator)
    return partner


def cutmix(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, _, height, width = x.shape
    partner = _partners(y, generator)
    area = 0.25 + 0.35 * torch.rand(n, generator=generator)
    aspect = torch.exp((torch.rand(n, generator=generator) - 0.5) * 1.0)
    box_h = (torch.sqrt(area * aspect) * height).clamp(2, height).long()
    box_w = (torch.sqrt(area / aspect) * width).clamp(2, width).long()
    top = (torch.rand(n, generator=generator) * (height - box_h + 1)).long()
    left = (torch.rand(n, generator=generator) * (width - box_w + 1)).long()
    rows = torch.arange(height)[None, :]
    cols = torch.arange(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    box = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
    return torch.where(box, x[partner], x)


def mixup(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    partner = _partners(y, generator)
    weight = (0.35 + 0.3 * torch.rand(len(x), generator=generator))[:, None, None, None]
    return weight * x + (1 - weight) * x[partner]


def shuffle(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, grid: int = 4):
    n, channels, height, width = x.shape
    ph, pw = height // grid, width // grid
    core = x[:, :, : ph * grid, : pw * grid]
    patches = core.reshape(n, channels, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(n, grid * grid, channels, ph, pw)
    order = torch.argsort(torch.rand(n, grid * grid, generator=generator), dim=1)
    patches = patches[torch.arange(n)[:, None], order]
    patches = patches.reshape(n, grid, grid, channels, ph, pw).permute(0, 3, 1, 4, 2, 5)
    out = x.clone()
    out[:, :, : ph * grid, : pw * grid] = patches.reshape(n, channels, ph * grid, pw * grid)
    return out


def erase(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    _, _, height, width = x.shape
    qh, qw = height // 4, width // 4
    # the top-left quarter tile, repeated over the centre: surface texture without the defect
    tile = x[:, :, :qh, :qw].repeat(1, 1, 2, 2)
    out = x.clone()
    out[:, :, qh : qh + 2 * qh, qw : qw + 2 * qw] = tile
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(2), out)


BUILDERS = {"cutmix": cutmix, "mixup": mixup, "shuffle": shuffle, "erase": erase}


def make_outliers(
    x: torch.Tensor,
    y: torch.Tensor,
    kinds: tuple[str, ...],
    count: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Returns `count` outliers built from the batch (x, y), the kinds in turn."""
    if not kinds or count <= 0:
        return x[:0]
    pick = torch.randperm(len(x), generator=generator)[:count]
    source_x, source_y = x[pick], y[pick]
    kind_of = torch.arange(len(pick)) % len(kinds)
    parts = []
    for index, kind in enumerate(kinds):
        chosen = kind_of == index
        if chosen.any():
            parts.append(BUILDERS[kind](source_x[chosen], source_y[chosen], generator))
    return torch.cat(parts)


def uniform_loss(logits: torch.Tensor) -> torch.Tensor:
    """Returns the mean cross-entropy from the logits to the uniform distribution (OE eq. 1)."""
    return -F.log_softmax(logits, dim=1).mean(dim=1).mean()
