"""Recipes: names parse into bit widths, overrides apply, bad input is a ConfigError."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lowbit.errors import ConfigError
from lowbit.quant import RECIPE_NAMES, Recipe, get_recipe, recipe_from_dict

QUANTIZED = [name for name in RECIPE_NAMES if name != "fp32"]


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_every_named_recipe_parses(name: str) -> None:
    recipe = get_recipe(name)
    assert isinstance(recipe, Recipe)
    assert recipe.name == name


@pytest.mark.parametrize("name", QUANTIZED)
def test_w_a_fields_and_defaults(name: str) -> None:
    weight_bits, act_bits = (int(part) for part in name[1:].split("a"))
    recipe = get_recipe(name)
    assert (recipe.weight_bits, recipe.act_bits) == (weight_bits, act_bits)
    # accelerator defaults (DESIGN.md, Recipes)
    assert (recipe.input_bits, recipe.first_weight_bits, recipe.head_weight_bits) == (8, 8, 8)
    assert recipe.per_channel and recipe.pow2_scales and recipe.ternary
    assert not recipe.is_float


def test_fp32_is_float_everywhere() -> None:
    recipe = get_recipe("fp32")
    assert recipe.is_float
    bits = ("weight_bits", "act_bits", "input_bits", "first_weight_bits", "head_weight_bits")
    assert all(getattr(recipe, field) is None for field in bits)


def test_names_not_in_the_list_parse_too() -> None:
    recipe = get_recipe("w3a5")
    assert (recipe.weight_bits, recipe.act_bits) == (3, 5)
    assert get_recipe("  W1A2 ") == get_recipe("w1a2")  # case and spaces do not matter


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("first_weight_bits", 4),
        ("head_weight_bits", 2),
        ("input_bits", 6),
        ("per_channel", False),
        ("pow2_scales", False),
        ("ternary", False),
    ],
)
def test_override_changes_only_its_field(field: str, value: object) -> None:
    base = get_recipe("w2a2")
    recipe = get_recipe("w2a2", **{field: value})
    assert getattr(recipe, field) == value
    assert dataclasses.replace(recipe, **{field: getattr(base, field)}) == base


def test_none_override_keeps_the_default() -> None:
    assert get_recipe("w1a2", first_weight_bits=None, input_bits=None) == get_recipe("w1a2")


def test_recipe_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_recipe("w1a2").weight_bits = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "name", ["w1", "a2", "w1a", "int8", "w1a2x", "w-1a2", "fp16", "", "w1 a2", "wa"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(ConfigError):
        get_recipe(name)


@pytest.mark.parametrize("name", ["w0a2", "w9a2", "w2a0", "w2a9", "w16a16"])
def test_bit_widths_out_of_range(name: str) -> None:
    with pytest.raises(ConfigError):
        get_recipe(name)


@pytest.mark.parametrize(
    "overrides",
    [
        {"first_weight_bits": 0},
        {"first_weight_bits": 9},
        {"first_weight_bits": 2.5},
        {"first_weight_bits": "8"},
        {"first_weight_bits": True},  # a bool is an int subclass, not a bit width
        {"head_weight_bits": 1},  # a head row needs a sign and a magnitude
        {"input_bits": 1},  # the input is signed
        {"act_bits": 2.0},
        {"colour": "blue"},
        {"weight_bits_typo": 2},
    ],
)
def test_bad_overrides(overrides: dict) -> None:
    with pytest.raises(ConfigError):
        get_recipe("w2a2", **overrides)


def test_fp32_cannot_get_half_a_recipe() -> None:
    with pytest.raises(ConfigError):
        get_recipe("fp32", weight_bits=2)


def test_unknown_field_error_names_the_field() -> None:
    with pytest.raises(ConfigError, match="colour"):
        get_recipe("w2a2", colour="blue")


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_from_dict_round_trip(name: str) -> None:
    recipe = get_recipe(name, pow2_scales=False) if name != "fp32" else get_recipe(name)
    saved = json.loads(json.dumps(recipe.to_dict()))  # what config.json / model.json hold
    assert recipe_from_dict(saved) == recipe


def test_recipe_from_dict_with_overrides_round_trip() -> None:
    recipe = get_recipe("w1a2", first_weight_bits=4, head_weight_bits=4, per_channel=False)
    assert recipe_from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize(
    "change",
    [
        {"future_field": 1},  # written by a newer lowbit
        {"weight_bits": 0},
        {"act_bits": None},
    ],
)
def test_recipe_from_dict_rejects_bad_data(change: dict) -> None:
    data = {**get_recipe("w2a2").to_dict(), **change}
    with pytest.raises(ConfigError):
        recipe_from_dict(data)


def test_recipe_from_dict_missing_field() -> None:
    data = get_recipe("w2a2").to_dict()
    del data["weight_bits"]
    with pytest.raises(ConfigError):
        recipe_from_dict(data)
