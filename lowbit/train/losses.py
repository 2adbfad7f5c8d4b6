"""Training losses: cross-entropy and LogitNorm (Wei et al. 2022, arXiv 2205.09310)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

# Temperature for LogitNorm, chosen by `benchmarks/tau_sweep.py` (w1a2 conv4 cosine head, built-in
# data). With the cosine head the logit vector is `scale * cos`, and LogitNorm divides by its
# norm, so the head's scale cancels and 1/tau alone sets the norm of the logits CE sees. The
# paper's 0.04 (linear heads) makes that norm 25; see the sweep's numbers in the report below.
DEFAULT_TAU = 0.1
LOGITNORM_EPS = 1e-7


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Returns the mean cross-entropy of `logits` [N, K] against labels `y` [N]."""
    return F.cross_entropy(logits, y)


def logitnorm_loss(logits: torch.Tensor, y: torch.Tensor, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """Returns CE(logits / (tau * ||logits||_2 + eps), y), LogitNorm eq. 5-6.

    eps = 1e-7 is added after the product; the authors' code adds it to the norm before
    multiplying by tau, a difference of (1 - tau) * 1e-7 in the denominator.
    """
    norms = torch.linalg.vector_norm(logits, ord=2, dim=-1, keepdim=True)
    return F.cross_entropy(logits / (tau * norms + LOGITNORM_EPS), y)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"ce": cross_entropy, "logitnorm": logitnorm_loss}
TAU_LOSSES = ("logitnorm",)  # losses that take a temperature


def make_loss(name: str, tau: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Returns loss(logits, y) for a name in LOSSES, with `tau` bound where the loss takes one."""
    loss = LOSSES[name]
    return partial(loss, tau=tau) if name in TAU_LOSSES else loss
