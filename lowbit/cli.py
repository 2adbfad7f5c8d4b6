"""`lowbit ...`: argparse subcommands, each a thin wrapper over one library function.

Results go to stdout (`--json` for machine-readable output), progress and logs to stderr.
A LowbitError becomes one line on stderr and its exit code; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lowbit.errors import LowbitError, VerifyError

log = logging.getLogger("lowbit")


def _csv(text: str | None) -> tuple[str, ...] | None:
    return tuple(part.strip() for part in text.split(",") if part.strip()) if text else None


def _recipe_overrides(args: argparse.Namespace) -> dict:
    overrides = {
        "input_bits": args.input_bits,
        "first_weight_bits": args.first_bits,
        "head_weight_bits": args.head_bits,
    }
    if args.per_tensor:
        overrides["per_channel"] = False
    if args.float_scales:
        overrides["pow2_scales"] = False
    return {key: value for key, value in overrides.items() if value is not None}


def cmd_data_make(args: argparse.Namespace) -> dict:
    from lowbit.data import write_mvtec

    root = write_mvtec(Path(args.out), seed=args.seed, per_class=args.per_class)
    return {"out": str(root)}


def _train_config(args: argparse.Namespace, **changes: object):
    from lowbit.train import TrainConfig

    fields = dict(
        recipe=args.recipe,
        recipe_overrides=_recipe_overrides(args),
        backbone=args.backbone,
        head=args.head,
        width=args.width,
        loss=args.loss,
        optimizer=args.optimizer,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        data=args.data,
        image_size=args.image_size,
        crop=not args.no_crop,
        unknown=_csv(args.unknown),
        init=args.init,
    )
    if args.tau is not None:
        fields["tau"] = args.tau
    fields.update(changes)
    return TrainConfig(**fields)


def cmd_train(args: argparse.Namespace) -> dict:
    from lowbit.train import train

    metrics = train(
        _train_config(args), Path(args.out), resume=args.resume, progress=not args.quiet
    )
    return metrics


def cmd_eval(args: argparse.Namespace) -> dict:
    from lowbit.export.run import _splits_for
    from lowbit.train import evaluate, load_run

    model, record = load_run(Path(args.run_dir))
    return evaluate(model, _splits_for(record))


def cmd_export(args: argparse.Namespace) -> dict:
    from lowbit.export.api import parse_batch
    from lowbit.export.run import export_run

    out_dir, description = export_run(args.run_dir, args.out, batch=parse_batch(args.batch))
    return {
        "out": str(out_dir),
        "model_bits": description["model_bits"]["total"],
        "ood": description["ood"],
        "layers": len(description["layers"]),
    }


def cmd_verify(args: argparse.Namespace) -> dict:
    from lowbit.export.run import verify_run
    from lowbit.verify.api import format_report

    report = verify_run(
        args.dir,
        data=args.data,
        n=args.n,
        random=args.random,
        ties=args.ties,
        executors=_csv(args.executors),
        progress=not args.quiet,
    )
    if not args.json:
        print(format_report(report))
    if report["unexplained"]:
        raise VerifyError(
            f"{args.dir}: {report['unexplained']} unexplained mismatches (see verify.json)"
        )
    return report


def cmd_run(args: argparse.Namespace) -> dict:
    from lowbit.pipeline import run_main_job

    return run_main_job(Path(args.out), quick=args.quick, progress=not args.quiet)


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="w1a2", help="fp32, w8a8, w4a4, w2a4, w2a2, w1a2, w1a1")
    parser.add_argument("--backbone", default="conv4", choices=["conv4", "resnet8"])
    parser.add_argument("--head", default="cosine", choices=["cosine", "linear"])
    parser.add_argument("--loss", default="logitnorm", choices=["ce", "logitnorm"])
    parser.add_argument("--tau", type=float, default=None, help="LogitNorm temperature")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="builtin", help="'builtin' or a data folder")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--no-crop", action="store_true", help="use whole images, not mask crops")
    parser.add_argument(
        "--unknown", default=None, help="classes held out as unknown, comma-separated"
    )
    parser.add_argument("--init", default=None, help="run directory whose weights start training")
    parser.add_argument("--input-bits", type=int, default=None)
    parser.add_argument("--first-bits", type=int, default=None, help="first conv weight bits")
    parser.add_argument("--head-bits", type=int, default=None, help="head weight bits")
    parser.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    parser.add_argument("--float-scales", action="store_true", help="float instead of power-of-two")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="built-in data set")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    make = data_sub.add_parser("make", help="write the built-in defect set in MVTec AD layout")
    make.add_argument("--out", required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--per-class", type=int, default=120)
    make.set_defaults(func=cmd_data_make)

    train = sub.add_parser("train", help="quantization-aware training into a run directory")
    _add_train_options(train)
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="evaluate a run on its test split")
    evaluate.add_argument("run_dir")
    evaluate.set_defaults(func=cmd_eval)

    export = sub.add_parser("export", help="write QONNX, QCDQ and integer graphs + model.json")
    export.add_argument("run_dir")
    export.add_argument("--out", default=None, help="output folder (default: the run directory)")
    export.add_argument("--batch", default="dynamic", help="batch size N, or 'dynamic'")
    export.set_defaults(func=cmd_export)

    verify = sub.add_parser("verify", help="compare every quantized tensor across executors")
    verify.add_argument("dir", help="export folder (holds model.json)")
    verify.add_argument(
        "--data", default=None, help="'builtin' or a data folder (default: the run's)"
    )
    verify.add_argument("--n", type=int, default=1000, help="real test images")
    verify.add_argument("--random", type=int, default=1000, help="random inputs")
    verify.add_argument(
        "--ties",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add inputs on the input quantizer's rounding ties",
    )
    verify.add_argument("--executors", default=None, help="subset of runtime,qcdq,qonnx")
    verify.set_defaults(func=cmd_verify)

    run = sub.add_parser("run", help="the main job: fp32 pre-training, w1a2 QAT, export, verify")
    run.add_argument("--out", default="runs/main")
    run.add_argument("--quick", action="store_true", help="tiny version for smoke tests")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
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
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif args.command not in ("verify", "run") and isinstance(result, dict):
        for key, value in result.items():
            if not isinstance(value, (dict, list)):
                print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
