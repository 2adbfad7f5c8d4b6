"""The `lowbit` argument parser: subcommands, their options, and help that shows the defaults
of the config dataclasses (TrainConfig, BenchOptions) without importing them to parse."""

from __future__ import annotations

import argparse
import dataclasses

from lowbit.artifacts import DESCRIPTION_FILE, INT_GRAPH_FILE
from lowbit.cli.commands import (
    cmd_bench,
    cmd_data_make,
    cmd_detect_fit,
    cmd_enroll,
    cmd_eval,
    cmd_export,
    cmd_fewshot,
    cmd_infer,
    cmd_inspect,
    cmd_predict,
    cmd_run,
    cmd_train,
    cmd_verify,
)

DESCRIPTION = "`lowbit ...`: argparse subcommands, each a thin wrapper over one library function."


def _add_detect_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    detect = sub.add_parser("detect", parents=[common], help="stage 1: anomaly detectors")
    detect_sub = detect.add_subparsers(dest="detect_command", required=True)
    fit = detect_sub.add_parser(
        "fit",
        parents=[common],
        help="fit a category's anomaly detector into an export (defect-free images only)",
        description="Fit stage 1 on a category's train/good images: an integer memory bank of "
        "the classifier's trunk codes, thresholds from validation good images (docs/anomaly.md).",
    )
    fit.add_argument("dir", help=f"export folder (holds {DESCRIPTION_FILE})")
    fit.add_argument(
        "--data", default=None, help="MVTec AD category folder (default: built-in whole images)"
    )
    fit.add_argument(
        "--category", default=None, help="built-in texture, or the category under --data"
    )
    # defaults: fit_detector's (lowbit/detect/fit.py, docs/anomaly.md)
    fit.add_argument("--layer", default=None, help="trunk tensor (backbone.blocks.2.act)")
    fit.add_argument("--aggregate", type=int, default=None, help="k x k code sums (3)")
    fit.add_argument("--bank-size", type=int, default=None, help="bank entries at most (2000)")
    fit.add_argument(
        "--false-alarm-rate",
        type=float,
        default=None,
        help="largest share of validation good images flagged (0.01)",
    )
    fit.add_argument(
        "--train-good", type=int, default=None, help="use the first N train/good images"
    )
    fit.add_argument("--seed", type=int, default=0, help="fit/validation split (and built-in data)")
    fit.set_defaults(func=cmd_detect_fit)

    inspect = sub.add_parser(
        "inspect",
        parents=[common],
        help="anomalous or not, where, and the defect's type, per whole image",
        description="Run the fitted detector on whole images and the classifier on the crop "
        "around each anomaly it finds (docs/anomaly.md).",
    )
    inspect.add_argument("dir", help=f"export folder (holds {DESCRIPTION_FILE})")
    inspect.add_argument("images", nargs="+", help="whole image files")
    inspect.add_argument("--category", default=None, help="detector to use (if several)")
    inspect.add_argument("--masks-out", default=None, help="folder for the masks (PNG, 0/255)")
    inspect.set_defaults(func=cmd_inspect)


class ConfigDefaultsFormatter(argparse.HelpFormatter):
    """Help that shows an option's default from its config dataclass (see _config_option),
    imported only when help is printed: the dataclasses import torch, parsing does not."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        source = getattr(action, "config_field", None)
        if source is None:
            return action.help
        value = config_default(*source)
        if value is None or isinstance(value, bool):  # None: the help says what it means
            return action.help
        shown = ",".join(value) if isinstance(value, tuple) else value
        return f"{action.help} (default: {shown})".replace("%", "%%")


def config_default(config: str, field_name: str) -> object:
    """Returns the default of `field_name` in the "train" (TrainConfig) or "bench"
    (BenchOptions) dataclass."""
    if config == "train":
        from lowbit.train import TrainConfig as dataclass_type
    else:
        from lowbit.bench import BenchOptions as dataclass_type
    field = {f.name: f for f in dataclasses.fields(dataclass_type)}[field_name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _config_option(parser: argparse.ArgumentParser, config: str, *flags: str, **kwargs) -> None:
    """Adds an option for the `config` dataclass field named like its dest. Its default is the
    dataclass's: the option is absent from the parsed args unless given (SUPPRESS), so the
    dataclass is the one source of defaults."""
    action = parser.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)
    action.config_field = (config, action.dest)


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    def option(*flags: str, **kwargs) -> None:
        _config_option(parser, "train", *flags, **kwargs)

    option("--recipe", help="fp32, w8a8, w4a4, w2a4, w2a2, w1a2, w1a1")
    option("--backbone", choices=["conv4", "resnet8"], help="network body")
    option("--head", choices=["cosine", "linear"], help="classifier head")
    option("--cosine-scale", type=float, help="cosine head's logit scale")
    option(
        "--learn-scale",
        action="store_true",
        help="train the cosine scale, starting at --cosine-scale (ignored by logitnorm)",
    )
    option("--loss", choices=["ce", "logitnorm"], help="training loss")
    option("--tau", type=float, help="LogitNorm temperature")
    option("--width", type=int, help="backbone channel width (default: the backbone's)")
    option(
        "--optimizer",
        choices=["auto", "sgd", "adamw"],
        help="auto: AdamW for 1-bit weights, else SGD",
    )
    option("--lr", type=float, help="learning rate (default: the optimizer's)")
    option("--epochs", type=int, help="training epochs")
    option("--batch-size", type=int, help="samples per step")
    option("--seed", type=int, help="random seed")
    option("--data", help="'builtin' or a data folder")
    option("--image-size", type=int, help="input side in pixels")
    parser.add_argument("--no-crop", action="store_true", help="use whole images, not mask crops")
    option(
        "--per-class",
        type=int,
        help="images per class: built-in data generates N (default 600), a folder is capped at N",
    )
    option("--unknown", help="classes held out as unknown, comma-separated")
    option("--init", help="run directory whose weights start training")
    option("--teacher", help="run directory to distill from (usually the --init run)")
    option("--distill-weight", type=float, help="weight of the distillation term")
    option(
        "--oe-weight",
        type=float,
        help="outlier exposure from known crops: weight of the flat-distribution term (0: off)",
    )
    option("--oe-kinds", help="comma-separated synthetic outlier kinds")
    option("--oe-fraction", type=float, help="outliers per batch, x batch size")
    parser.add_argument("--input-bits", type=int, default=None)
    parser.add_argument("--first-bits", type=int, default=None, help="first conv weight bits")
    parser.add_argument("--head-bits", type=int, default=None, help="head weight bits")
    parser.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    parser.add_argument("--float-scales", action="store_true", help="float instead of power-of-two")


GLOBAL_FLAGS = {
    "--debug": "show tracebacks",
    "--json": "print machine-readable JSON",
    "--quiet": "print only results and errors: no logs, no progress",
}


def _global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    for flag, text in GLOBAL_FLAGS.items():
        parser.add_argument(flag, action="store_true", default=default, help=text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowbit", description=DESCRIPTION)
    _global_flags(parser, False)
    # the same flags after the subcommand: SUPPRESS keeps the value given before it when absent
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", parents=[common], help="built-in data set")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    make = data_sub.add_parser(
        "make", parents=[common], help="write the built-in defect set in MVTec AD layout"
    )
    make.add_argument("--out", required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument(
        "--per-class", type=int, default=None, help="images per defect type (default 600)"
    )
    make.set_defaults(func=cmd_data_make)

    train = sub.add_parser(
        "train",
        parents=[common],
        help="quantization-aware training into a run directory",
        formatter_class=ConfigDefaultsFormatter,
    )
    _add_train_options(train)
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    train.add_argument(
        "--nproc", type=int, default=1, help="training processes (batch size: a multiple of it)"
    )
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", parents=[common], help="evaluate a run on its test split")
    evaluate.add_argument("run_dir")
    evaluate.set_defaults(func=cmd_eval)

    export = sub.add_parser(
        "export",
        parents=[common],
        help=f"write QONNX, QCDQ and integer graphs + {DESCRIPTION_FILE}",
    )
    export.add_argument("run_dir")
    export.add_argument("--out", default=None, help="output folder (default: the run directory)")
    export.add_argument(
        "--batch",
        default="dynamic",
        help="batch size N of every graph, or 'dynamic' (model.qonnx.onnx then has batch 1)",
    )
    export.add_argument(
        "--target",
        default="onnx",
        help="comma list of targets in lowbit/targets/__init__.py (onnx, c, ...); onnx always runs",
    )
    export.add_argument(
        "--ood-score",
        default=None,
        help="deployed unknown-type score: msp, max_logit, energy, prototype, mahalanobis, "
        "rel_mahalanobis, residual, vim (default: lowbit's selected one)",
    )
    export.add_argument(
        "--ood-views",
        type=int,
        default=None,
        choices=(1, 2, 4, 8),
        help="dihedral views of each crop whose features the score sums (prototype, "
        "mahalanobis, rel_mahalanobis, residual; default 8 for these, 1 otherwise)",
    )
    export.set_defaults(func=cmd_export)

    verify = sub.add_parser(
        "verify", parents=[common], help="compare every quantized tensor across executors"
    )
    verify.add_argument("dir", help=f"export folder (holds {DESCRIPTION_FILE})")
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
    verify.add_argument(
        "--detector-images",
        type=int,
        default=8,
        help="whole images of its category per fitted detector (default 8; 0 with "
        "--detector-random 0: skip the detectors)",
    )
    verify.add_argument(
        "--detector-random", type=int, default=4, help="random images per detector (default 4)"
    )
    verify.add_argument(
        "--detector-qonnx",
        type=int,
        default=2,
        help="of those, images through qonnx's slow executor (default 2)",
    )
    verify.set_defaults(func=cmd_verify)

    run = sub.add_parser(
        "run", parents=[common], help="the main job: fp32 pre-training, w1a2 QAT, export, verify"
    )
    run.add_argument("--out", default="runs/main")
    run.add_argument("--quick", action="store_true", help="tiny version for smoke tests")
    run.add_argument(
        "--inspect",
        nargs="?",
        const="brick",
        default=None,
        metavar="TEXTURE",
        help="also fit a stage-1 detector for a built-in texture (default brick) into the w1a2 "
        "export, verify it and inspect the texture's test images (adds ~2 min)",
    )
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser(
        "bench",
        parents=[common],
        help="recipe sweep: train, export, verify, measure, report",
        formatter_class=ConfigDefaultsFormatter,
    )

    def bench_option(*flags: str, **kwargs) -> None:
        _config_option(bench, "bench", *flags, **kwargs)

    bench_option("--data", help="'builtin' or a data folder")
    bench_option("--recipes", help="comma-separated recipes")
    bench_option("--heads", help="cosine,linear")
    bench_option("--losses", help="ce,logitnorm")
    bench_option("--seeds", type=int, help="number of seeds (0 .. N-1)")
    bench_option("--unknown", help="classes held out as unknown")
    bench_option("--epochs", type=int, help="default 15 (1 with --quick)")
    bench_option("--verify-n", type=int, help="real and random verify inputs (default 1000)")
    bench_option(
        "--per-class",
        type=int,
        help="images per class (built-in: default 600, 120 with --quick; folder: a cap)",
    )
    bench_option(
        "--learn-scale", action="store_true", help="train the cosine heads' scale (see train)"
    )
    bench_option(
        "--oe-weight",
        type=float,
        help="outlier exposure weight for every run (default: train's; 0: off)",
    )
    bench_option("--quick", action="store_true", help="tiny settings for smoke tests")
    bench.add_argument("--out", default="runs/bench", help="sweep folder (reused: it resumes)")
    bench.set_defaults(func=cmd_bench)

    infer = sub.add_parser(
        "infer", parents=[common], help=f"run {INT_GRAPH_FILE} on a .npy input with the runtime"
    )
    infer.add_argument("model", help=f"{INT_GRAPH_FILE}, or an export folder holding it")
    infer.add_argument(
        "input", help=f".npy float32 [N, C, H, W], normalized as in {DESCRIPTION_FILE}"
    )
    infer.add_argument("--out", required=True, help=".npz file for the outputs (atomic)")
    infer.add_argument("--batch-size", type=int, default=None, help="samples per chunk")
    infer.set_defaults(func=cmd_infer)

    fewshot = sub.add_parser(
        "fewshot", parents=[common], help="N-way K-shot episodes on the run's novel classes"
    )
    fewshot.add_argument("run_dir")
    fewshot.add_argument("--way", type=int, default=5)
    fewshot.add_argument("--shots", default="1,5", help="comma-separated K values")
    fewshot.add_argument("--queries", type=int, default=15, help="query images per class")
    fewshot.add_argument("--episodes", type=int, default=600)
    fewshot.add_argument("--methods", default="imprint,finetune", help="imprint,finetune")
    fewshot.add_argument("--integer", action="store_true", help=f"features from {INT_GRAPH_FILE}")
    fewshot.add_argument("--seed", type=int, default=0)
    fewshot.set_defaults(func=cmd_fewshot)

    enroll = sub.add_parser(
        "enroll", parents=[common], help="add (or --remove) a class in an exported model"
    )
    enroll.add_argument("dir", help=f"export folder (holds {DESCRIPTION_FILE})")
    enroll.add_argument("--class", dest="class_name", default=None, help="name of the new class")
    enroll.add_argument("--images", nargs="+", default=None, help="support images of the class")
    enroll.add_argument("--remove", default=None, help="remove this class instead")
    enroll.add_argument("--verify-n", type=int, default=200, help="real and random verify inputs")
    enroll.set_defaults(func=cmd_enroll)

    predict = sub.add_parser(
        "predict",
        parents=[common],
        help="class, score and known/unknown per image, cut around the detector's mask or box",
        description="Classify defects a detector found: each image is cut around its mask or "
        "box exactly as the training images were (docs/predict.md).",
    )
    predict.add_argument("dir", help=f"export folder (holds {DESCRIPTION_FILE})")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument(
        "--mask",
        nargs="+",
        action="extend",
        default=None,
        metavar="MASK",
        help="the detector's mask of each image (non-zero = defect), in the images' order; "
        "or a .json/.csv list of mask files",
    )
    predict.add_argument(
        "--box",
        nargs="+",
        action="extend",
        default=None,
        metavar="X0,Y0,X1,Y1",
        help="the detector's box of each image in pixels (end-exclusive), in the images' order; "
        "or a .json/.csv list of boxes",
    )
    predict.add_argument(
        "--whole-image",
        action="store_true",
        help="the images already are crops around the defect: use each one whole",
    )
    predict.set_defaults(func=cmd_predict)
    _add_detect_parsers(sub, common)
    return parser
