"""Bit-width recipes: one frozen dataclass names every bit width and scale rule of a model."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

from lowbit.errors import ConfigError

RECIPE_NAMES = ("fp32", "w8a8", "w4a4", "w2a4", "w2a2", "w1a2", "w1a1")
_NAME = re.compile(r"^w(\d+)a(\d+)$")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Bit widths and scale rules; `None` bits mean float (the fp32 recipe)."""

    name: str
    weight_bits: int | None  # body conv weights; 1 = bipolar {-1,+1}, 2 = ternary {-1,0,+1}
    act_bits: int | None  # body activations after ReLU: unsigned, 2^A levels
    input_bits: int | None = 8  # accelerators take 8-bit pixels
    first_weight_bits: int | None = 8  # the first conv sees raw pixels: low bits hurt most there
    head_weight_bits: int | None = 8  # class rows of the cosine/linear head
    per_channel: bool = (
        True  # one weight scale per output channel (free in hardware: folds into thresholds)
    )
    pow2_scales: bool = True  # power-of-two scales are shifts in hardware and keep float math exact
    ternary: bool = True  # 2-bit weights narrow {-1,0,+1}; False: {-2,-1,0,+1}

    def __post_init__(self) -> None:
        for field in (
            "weight_bits",
            "act_bits",
            "input_bits",
            "first_weight_bits",
            "head_weight_bits",
        ):
            bits = getattr(self, field)
            valid = isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= 8
            if bits is not None and not valid:
                raise ConfigError(
                    f"recipe {self.name!r}: {field}={bits!r} must be an integer 1..8 or None"
                )
        if (self.weight_bits is None) != (self.act_bits is None):
            raise ConfigError(
                f"recipe {self.name!r}: weight_bits and act_bits must both be set or both None"
            )
        if self.input_bits is not None and self.input_bits < 2:
            raise ConfigError(f"recipe {self.name!r}: input_bits must be at least 2 (signed input)")
        if self.head_weight_bits is not None and self.head_weight_bits < 2:
            raise ConfigError(f"recipe {self.name!r}: head_weight_bits must be at least 2")

    @property
    def is_float(self) -> bool:
        return self.weight_bits is None

    def to_dict(self) -> dict:
        return asdict(self)


def get_recipe(name: str, **overrides: object) -> Recipe:
    """Returns the named recipe (`fp32` or `w{W}a{A}`) with per-layer overrides applied."""
    name = name.strip().lower()
    if name == "fp32":
        base = Recipe(
            name="fp32",
            weight_bits=None,
            act_bits=None,
            input_bits=None,
            first_weight_bits=None,
            head_weight_bits=None,
        )
    else:
        match = _NAME.match(name)
        if not match:
            raise ConfigError(
                f"unknown recipe {name!r}: use fp32 or w<W>a<A> (e.g. {', '.join(RECIPE_NAMES)})"
            )
        base = Recipe(name=name, weight_bits=int(match.group(1)), act_bits=int(match.group(2)))
    clean = {key: value for key, value in overrides.items() if value is not None}
    unknown = set(clean) - set(Recipe.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
    return replace(base, **clean) if clean else base


def recipe_from_dict(data: dict) -> Recipe:
    """Rebuilds a recipe saved with `Recipe.to_dict` (config.json, model.json)."""
    try:
        return Recipe(**data)
    except TypeError as error:
        raise ConfigError(f"recipe fields do not match this lowbit version: {error}") from None
