"""TrainConfig: every choice of a training run, saved resolved in the run's config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from lowbit.errors import ConfigError
from lowbit.quant.layers import ACT_STATS_STEPS
from lowbit.quant.recipes import get_recipe
from lowbit.train.losses import DEFAULT_TAU, LOSSES
from lowbit.train.outliers import OUTLIER_KINDS

OPTIMIZERS = ("auto", "sgd", "adamw")
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}


def auto_optimizer(recipe: str, overrides: dict) -> str:
    """Returns "adamw" for 1-bit body weights, else "sgd".

    Adam suits binary latent weights (Liu et al. 2021, "How Do Adam and Training Strategies Help
    BNNs Optimization?", arXiv 2106.11309). Measured here (conv4-64, 15 epochs from the same fp32
    pre-training run, seed 0, the earlier 120-per-type built-in set; val / test accuracy, SGD
    lr 0.05 vs AdamW lr 1e-3 without weight decay): w1a2 0.771 / 0.804 vs 0.806 / 0.833;
    w2a2 0.833 / 0.867 vs 0.799 / 0.842; fp32 0.889 / 0.908 vs 0.889 / 0.879. Only 1-bit
    weights gain.
    """
    return "adamw" if get_recipe(recipe, **overrides).weight_bits == 1 else "sgd"


# Fields added after lowbit first saved configs, with the value that reproduces a run saved
# without them: a changed default must not relabel older runs as trained with it.
ABSENT_MEANS = {"oe_weight": 0.0}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run. `resolved()` fills the per-optimizer defaults; config.json holds that."""

    recipe: str = "w1a2"
    recipe_overrides: dict = field(default_factory=dict)  # Recipe fields, e.g. {"input_bits": 6}
    backbone: str = "conv4"
    head: str = "cosine"
    width: int | None = None  # None: the backbone's default width
    cosine_scale: float = 10.0  # the cosine head's logit scale (its start value if learned)
    # learn the cosine scale (Baseline++'s "fixed or learnable" scalar). LogitNorm's loss is
    # invariant to it, so with loss "logitnorm" and no teacher it stays at cosine_scale.
    learn_scale: bool = False
    loss: str = "logitnorm"  # as good as ce at OOD rejection, 0.5 points more accurate (README)
    tau: float = DEFAULT_TAU  # LogitNorm temperature; ignored by "ce"
    optimizer: str = "auto"  # "auto": AdamW for 1-bit weights, else SGD (Nesterov); see above
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    weight_decay: float = 5e-4  # on conv and head weights only, never on BN or quantizer scales
    momentum: float = 0.9  # SGD momentum (Nesterov); AdamW's beta1 stays at its default
    epochs: int = 30
    # Linear warm-up over the steps in which activation scales are measured from statistics:
    # the weights barely move while the scales are taken. Multiplies the cosine schedule.
    warmup_steps: int = ACT_STATS_STEPS
    batch_size: int = 64
    seed: int = 0
    data: str = "builtin"  # "builtin" or a data directory, passed to lowbit.data.load_splits
    image_size: int = 32
    crop: bool = True  # crop around the defect mask before resizing
    # images per class: "builtin" generates this many (None: 600), a folder is capped (None: all)
    per_class: int | None = None
    unknown: tuple[str, ...] | None = None  # classes held out as OOD; None: the data set's default
    init: str | None = None  # a run directory (usually fp32) whose weights start this run
    # Knowledge distillation (Hinton et al. 2015, arXiv 1503.02531; for low-bit students:
    # Mishra & Marr 2018, "Apprentice", arXiv 1711.05852): a run directory (usually the fp32
    # `init` run) whose softened logits the student also matches. None: no teacher.
    teacher: str | None = None
    distill_weight: float = 0.5  # loss = (1 - w) * task loss + w * T^2 * KL(teacher || student)
    distill_temperature: float = 4.0  # T: softens both distributions (the paper's usual 2..8)
    augment: bool = True  # random horizontal flips and shifts of up to image_size/16 pixels
    # Outlier exposure from known data only (lowbit/train/outliers.py): every batch gets
    # oe_fraction x batch_size synthetic outliers built from its own crops, and the loss adds
    # oe_weight x CE(outlier logits, uniform). 0: off.
    oe_weight: float = 0.0
    oe_kinds: tuple[str, ...] = OUTLIER_KINDS
    oe_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"loss={self.loss!r}: choose from {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
        if self.per_class is not None and (
            not isinstance(self.per_class, int) or self.per_class < 1
        ):
            raise ConfigError(f"per_class={self.per_class!r} must be a positive integer or None")
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps={self.warmup_steps!r} must be an integer >= 0")
        if not self.cosine_scale > 0:  # also rejects NaN
            raise ConfigError(f"cosine_scale={self.cosine_scale} must be positive")
        if self.learn_scale and self.head != "cosine":
            raise ConfigError(f"learn_scale needs head='cosine' (head={self.head!r} has no scale)")
        if self.tau <= 0:
            raise ConfigError(f"tau={self.tau} must be positive")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr={self.lr} must be positive")
        if not 0 <= self.distill_weight <= 1 or self.distill_temperature <= 0:
            raise ConfigError("distill_weight must lie in [0, 1] and distill_temperature be > 0")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError("weight_decay must be >= 0 and momentum in [0, 1)")
        if self.unknown is not None and not isinstance(self.unknown, tuple):
            object.__setattr__(self, "unknown", tuple(self.unknown))  # JSON lists come back here
        if not isinstance(self.oe_kinds, tuple):
            object.__setattr__(self, "oe_kinds", tuple(self.oe_kinds))
        bad = [kind for kind in self.oe_kinds if kind not in OUTLIER_KINDS]
        if bad or not self.oe_kinds:
            raise ConfigError(
                f"oe_kinds={list(self.oe_kinds)!r}: "
                f"choose one or more of {', '.join(OUTLIER_KINDS)}"
            )
        if not self.oe_weight >= 0 or not 0 < self.oe_fraction <= 4:
            raise ConfigError("oe_weight must be >= 0 and oe_fraction in (0, 4]")
        get_recipe(self.recipe, **self.recipe_overrides)  # fails early on a bad recipe

    def resolved(self) -> TrainConfig:
        """Returns a copy with the per-optimizer defaults written in."""
        optimizer = self.optimizer
        if optimizer == "auto":
            optimizer = auto_optimizer(self.recipe, self.recipe_overrides)
        lr = self.lr if self.lr is not None else DEFAULT_LR[optimizer]
        return replace(self, optimizer=optimizer, lr=lr)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["unknown"] = list(self.unknown) if self.unknown is not None else None
        data["oe_kinds"] = list(self.oe_kinds)
        return data

    @classmethod
    def with_defaults(cls, saved: dict) -> dict:
        """Returns a saved config dict with fields added after it was written filled in with
        what such a run did (ABSENT_MEANS, else the default), so a run from an older lowbit
        compares equal to the same run configured today, and never to a run it was not."""
        return {**cls().to_dict(), **ABSENT_MEANS, **saved}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Rebuilds a config saved with `to_dict`; unknown fields are an error."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown train config field(s): {', '.join(sorted(unknown))}")
        return cls(**data)
