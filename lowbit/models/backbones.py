"""Backbones: conv4 (the few-shot standard) and resnet8, for every recipe from one code path."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models.layers import AffineBatchNorm2d
from lowbit.quant.layers import make_conv, make_input_quant, make_relu, make_residual_quant
from lowbit.quant.recipes import Recipe


class ConvBlock(nn.Module):
    """conv3x3 -> BN -> (quantized) ReLU -> optional 2x2 max-pool: one integer layer."""

    def __init__(self, recipe: Recipe, in_ch: int, out_ch: int, *, first: bool, pool: bool) -> None:
        super().__init__()
        self.conv = make_conv(recipe, in_ch, out_ch, 3, first=first)
        self.bn = AffineBatchNorm2d(out_ch)
        self.act = make_relu(recipe)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class Conv4(nn.Module):
    """4 x [conv3x3-BN-ReLU-maxpool] (Vinyals et al. 2016; Baseline++ backbone), flattened."""

    def __init__(self, recipe: Recipe, *, width: int = 64, input_max_abs: float = 2.0) -> None:
        super().__init__()
        self.input_quant = make_input_quant(recipe, input_max_abs)
        channels = [3, width, width, width, width]
        self.blocks = nn.ModuleList(
            ConvBlock(recipe, channels[i], channels[i + 1], first=i == 0, pool=True)
            for i in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        for block in self.blocks:
            x = block(x)
        return torch.flatten(x, 1)


class ResidualBlock(nn.Module):
    """Basic block; both add operands share one quantizer, so the add is an exact integer sum."""

    def __init__(self, recipe: Recipe, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = make_conv(recipe, in_ch, out_ch, 3, stride=stride)
        self.bn1 = AffineBatchNorm2d(out_ch)
        self.act1 = make_relu(recipe)
        self.conv2 = make_conv(recipe, out_ch, out_ch, 3)
        self.bn2 = AffineBatchNorm2d(out_ch)
        self.res_quant = make_residual_quant(recipe)
        self.downsample = stride != 1 or in_ch != out_ch
        if self.downsample:
            self.conv_sc = make_conv(recipe, in_ch, out_ch, 1, stride=stride)
            self.bn_sc = AffineBatchNorm2d(out_ch)
        self.act_out = make_relu(recipe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        short = self.bn_sc(self.conv_sc(x)) if self.downsample else x
        return self.act_out(self.res_quant(main) + self.res_quant(short))


class ResNet8(nn.Module):
    """Narrow ResNet: stem + 3 basic blocks (w, 2w, 4w), sum-pooled features."""

    def __init__(self, recipe: Recipe, *, width: int = 16, input_max_abs: float = 2.0) -> None:
        super().__init__()
        self.input_quant = make_input_quant(recipe, input_max_abs)
        self.stem = ConvBlock(recipe, 3, width, first=True, pool=False)
        self.blocks = nn.ModuleList(
            [
                ResidualBlock(recipe, width, width, 1),
                ResidualBlock(recipe, width, 2 * width, 2),
                ResidualBlock(recipe, 2 * width, 4 * width, 2),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.input_quant(x))
        for block in self.blocks:
            x = block(x)
        # Sum pooling: an integer sum of codes; the 1/N of average pooling cancels in the cosine
        # head and folds into the linear head's scale.
        return x.sum(dim=(2, 3))


BACKBONES = {"conv4": Conv4, "resnet8": ResNet8}
DEFAULT_WIDTH = {"conv4": 64, "resnet8": 16}
