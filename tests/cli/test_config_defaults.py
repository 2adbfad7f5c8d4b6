"""The CLI's train and bench options take their defaults from TrainConfig and BenchOptions:
an option left out is absent from the parsed args, and the dataclass fills it in."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from lowbit.bench import BenchOptions
from lowbit.cli.commands import _bench_options, _train_config
from lowbit.cli.parser import build_parser
from lowbit.train import TrainConfig


def subparser(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def config_actions(name: str, config: type) -> list[argparse.Action]:
    """The options of subcommand `name` whose dest is a field of `config`."""
    names = {f.name for f in dataclasses.fields(config)}
    return [a for a in subparser(name)._actions if a.dest in names]


def field_defaults(config: type) -> dict:
    return {f.name: getattr(config(), f.name) for f in dataclasses.fields(config)}


@pytest.mark.parametrize(
    ("name", "config", "minimal"),
    [("train", TrainConfig, ["train", "--out", "RUN"]), ("bench", BenchOptions, ["bench"])],
)
def test_options_left_out_take_the_dataclass_defaults(name, config, minimal):
    actions = config_actions(name, config)
    assert len(actions) >= 10  # the options really are matched to fields by name
    for action in actions:  # no option carries a default of its own that could drift
        assert action.default is argparse.SUPPRESS, action.option_strings
    args = build_parser().parse_args(minimal)
    built = _train_config(args) if name == "train" else _bench_options(args)[0]
    for field, default in field_defaults(config).items():
        assert getattr(built, field) == default, field


def test_every_train_option_reaches_its_field():
    values = {"int": 3, "float": 0.25, "str": "w2a2"}
    for action in config_actions("train", TrainConfig):
        flag = action.option_strings[0]
        if action.nargs == 0:  # a store_true flag
            argv, expected = [flag], True
        elif action.choices:
            expected = [c for c in action.choices if c != getattr(TrainConfig(), action.dest)][0]
            argv = [flag, expected]
        else:
            kind = action.type.__name__ if action.type else "str"
            argv, expected = [flag, str(values[kind])], values[kind]
        if action.dest in ("unknown", "oe_kinds"):
            argv, expected = [flag, "mixup,erase"], ("mixup", "erase")
        if action.dest == "learn_scale":
            argv += ["--head", "cosine"]
        args = build_parser().parse_args(["train", "--out", "RUN", *argv])
        assert getattr(_train_config(args), action.dest) == expected, flag


def test_help_shows_the_dataclass_default():
    text = " ".join(subparser("train").format_help().split())
    for field in ("epochs", "batch_size", "cosine_scale", "recipe", "oe_fraction"):
        assert f"(default: {getattr(TrainConfig(), field)})" in text, field
    text = " ".join(subparser("bench").format_help().split())
    assert f"(default: {','.join(BenchOptions().recipes)})" in text
