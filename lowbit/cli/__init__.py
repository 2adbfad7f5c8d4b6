"""`lowbit ...`: argparse subcommands, each a thin wrapper over one library function.

`main` parses (lowbit/cli/parser.py), runs the subcommand (lowbit/cli/commands.py) and prints.
Results go to stdout (`--json` for machine-readable output), progress and logs to stderr;
`--quiet` leaves only results and errors. A LowbitError becomes one line on stderr and its exit
code; `--debug` shows the traceback. Python warnings go through logging, so they follow the
same verbosity, and those of dependencies that tell a lowbit user nothing are dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

from lowbit.cli.parser import build_parser
from lowbit.errors import LowbitError

# (message regex, category, module regex) of dependency warnings a lowbit user cannot act on
IGNORED_WARNINGS = (
    # brevitas.graph.equalize, imported by brevitas' ONNX export: a CUDA kernel for Hadamard
    # rotations, which lowbit never applies
    (r"fast_hadamard_transform package not found", UserWarning, r"brevitas\."),
    # brevitas.graph.base, same import: brevitas' own modules use brevitas.fx, lowbit does not
    (r"brevitas\.fx is deprecated", DeprecationWarning, r"brevitas\."),
)
# subcommands that print their own human-readable result (all print JSON with --json)
PRINTS_OWN_RESULT = ("eval", "verify", "run", "bench", "fewshot", "enroll", "predict")


def configure_output(quiet: bool) -> None:
    """Logs (and Python warnings, through logging) to stderr: INFO and up, ERROR with --quiet.

    Dependency warnings in IGNORED_WARNINGS are dropped; call inside warnings.catch_warnings()
    so that a caller of `main` in the same process keeps its own filters.
    """
    level = logging.ERROR if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger().setLevel(level)
    logging.captureWarnings(True)
    for message, category, module in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root_level = logging.getLogger().level
    with warnings.catch_warnings():
        configure_output(args.quiet)
        try:
            return _run(args)
        finally:  # leave the process as it was: `main` may be called from Python
            logging.captureWarnings(False)
            logging.getLogger().setLevel(root_level)


def _run(args: argparse.Namespace) -> int:
    try:
        result = args.func(args)
    except LowbitError as error:
        if args.debug:
            raise
        print(f"lowbit: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("lowbit: interrupted", file=sys.stderr)
        return 130
    if result is None:  # nothing to print (a torchrun process other than rank 0)
        return 0
    sys.stderr.flush()  # the last log lines before the results, not among them
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif args.command not in PRINTS_OWN_RESULT and isinstance(result, dict):
        for key, value in result.items():
            if not isinstance(value, (dict, list)):
                print(f"{key}: {value}")
    return 0
