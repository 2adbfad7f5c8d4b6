"""build_model: the one place that turns a recipe and a few choices into a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.models.backbones import BACKBONES, DEFAULT_WIDTH
from lowbit.models.heads import HEADS, CosineHead, LinearHead
from lowbit.quant.recipes import Recipe


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything besides the recipe that fixes a model's shape."""

    backbone: str = "conv4"
    head: str = "cosine"
    num_classes: int = 8
    width: int | None = None  # None: the backbone's default (conv4: 64, resnet8: 16)
    image_size: int = 32
    cosine_scale: float = 10.0  # Baseline++ uses a fixed scale; 10 keeps softmax from saturating
    learn_scale: bool = False
    input_max_abs: float = 2.0  # normalized inputs lie in [-2, 2] (mean 0.5, std 0.25)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(
                f"unknown backbone {self.backbone!r}: choose from {', '.join(BACKBONES)}"
            )
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r}: choose from {', '.join(HEADS)}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes={self.num_classes}: need at least 2 classes")
        if self.image_size < 16 or self.image_size % 16:
            raise ConfigError(
                f"image_size={self.image_size}: must be a multiple of 16 (4 pooling stages)"
            )

    @property
    def resolved_width(self) -> int:
        return self.width or DEFAULT_WIDTH[self.backbone]

    def to_dict(self) -> dict:
        return asdict(self)


class LowbitModel(nn.Module):
    """backbone -> features -> head."""

    def __init__(self, recipe: Recipe, config: ModelConfig) -> None:
        super().__init__()
        self.recipe = recipe
        self.config = config
        width = config.resolved_width
        self.backbone = BACKBONES[config.backbone](
            recipe, width=width, input_max_abs=config.input_max_abs
        )
        features = self.feature_dim()
        if config.head == "cosine":
            self.head = CosineHead(
                features,
                config.num_classes,
                weight_bits=recipe.head_weight_bits,
                scale=config.cosine_scale,
                learn_scale=config.learn_scale,
                pow2=recipe.pow2_scales,
            )
        else:
            self.head = LinearHead(
                features,
                config.num_classes,
                weight_bits=recipe.head_weight_bits,
                pow2=recipe.pow2_scales,
            )

    def feature_dim(self) -> int:
        width = self.config.resolved_width
        if self.config.backbone == "conv4":
            side = self.config.image_size // 16
            return width * side * side
        return 4 * width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_model(recipe: Recipe, config: ModelConfig | None = None, **fields: object) -> LowbitModel:
    """Returns a model for `recipe`; `fields` override ModelConfig's defaults."""
    config = config or ModelConfig(**fields)
    return LowbitModel(recipe, config)
