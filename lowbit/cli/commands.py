"""One function per `lowbit` subcommand: each calls one library function and returns its result.

Those listed in PRINTS_OWN_RESULT (lowbit/cli/__init__.py) print their human-readable result
themselves unless `--json`; `main` prints the returned dict as JSON with `--json`, and the plain
fields of the others' as `key: value` lines. Library imports sit inside each command, so parsing
(and `--help`) imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from lowbit.artifacts import CONFIG_FILE, DESCRIPTION_FILE, VERIFY_FILE
from lowbit.errors import VerifyError


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
    from lowbit.io import writing

    per_class = {} if args.per_class is None else {"per_class": args.per_class}
    with writing(args.out):  # thousands of PNG writes: one line names the folder
        root = write_mvtec(Path(args.out), seed=args.seed, **per_class)
    return {"out": str(root)}


def _given(args: argparse.Namespace, config: type) -> dict:
    """Returns {field: value} of the `config` dataclass's options given on the command line;
    the others are absent from `args` (parser.py's _config_option), so the dataclass supplies
    them."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config) if f.name in args}


def _train_config(args: argparse.Namespace, **changes: object):
    from lowbit.train import TrainConfig

    fields = _given(args, TrainConfig)
    if "unknown" in fields:
        fields["unknown"] = _csv(fields["unknown"])
    if "oe_kinds" in fields:
        fields["oe_kinds"] = _csv(fields["oe_kinds"]) or ()
    if getattr(args, "no_crop", False):
        fields["crop"] = False
    fields["recipe_overrides"] = _recipe_overrides(args)
    fields.update(changes)
    return TrainConfig(**fields)


def cmd_train(args: argparse.Namespace) -> dict | None:
    from lowbit.train.distributed import is_main_process
    from lowbit.train.parallel import train_parallel

    metrics = train_parallel(
        _train_config(args),
        Path(args.out),
        nproc=args.nproc,
        resume=args.resume,
        progress=not args.quiet,
    )
    return metrics if is_main_process() else None  # under torchrun, rank 0 prints


def cmd_eval(args: argparse.Namespace) -> dict:
    from lowbit.train import TrainConfig, evaluate, load_run
    from lowbit.train.report import eval_report
    from lowbit.train.run import splits_for

    model, record = load_run(Path(args.run_dir))
    config = None
    if isinstance(record.get("train"), dict):
        config = TrainConfig.from_dict(TrainConfig.with_defaults(record["train"]))
    metrics = evaluate(model, splits_for(record, Path(args.run_dir) / CONFIG_FILE), config=config)
    if not args.json:
        print(eval_report(metrics, record, own_export(Path(args.run_dir)), args.run_dir))
    return metrics


def own_export(run_dir: Path) -> dict | None:
    """Returns the model.json that `lowbit export RUN` wrote into the run itself, else None."""
    from lowbit.manifest import read_description

    if not (run_dir / DESCRIPTION_FILE).is_file():
        return None
    description = read_description(run_dir)
    return description if description.get("source_run", ".") == "." else None


def cmd_export(args: argparse.Namespace) -> dict:
    from lowbit.deploy import export_with_targets
    from lowbit.export.api import parse_batch
    from lowbit.targets import parse_targets

    targets = parse_targets(args.target)  # before the export: a typo fails fast
    out_dir, description, written = export_with_targets(
        args.run_dir,
        args.out,
        targets=targets,
        batch=parse_batch(args.batch),
        ood_score=args.ood_score,
        ood_views=args.ood_views,
    )
    return {
        "out": str(out_dir),
        "deployed_bits": description["deployed_bits"]["total"],
        "ood": description["ood"],
        "layers": len(description["layers"]),
        "targets": written,
    }


def cmd_verify(args: argparse.Namespace) -> dict:
    from lowbit.verify.api import format_report
    from lowbit.verify.detector import format_detector_report
    from lowbit.verify.run import verify_run

    report = verify_run(
        args.dir,
        data=args.data,
        n=args.n,
        random=args.random,
        ties=args.ties,
        executors=_csv(args.executors),
        progress=not args.quiet,
        detector_images=args.detector_images,
        detector_random=args.detector_random,
        detector_qonnx=args.detector_qonnx,
    )
    if not args.json:
        print(format_report(report))
        for category, detector in report["detector"].items():
            print(f"detector {category}: " + format_detector_report(detector))
            shipped = ", ".join(f"{k} {v}" for k, v in detector["shipped_graphs"].items())
            print(f"detector {category}: shipped graphs: {shipped or 'none'}")
    if report["unexplained"]:
        raise VerifyError(
            f"{args.dir}: {report['unexplained']} unexplained mismatches (see {VERIFY_FILE})"
        )
    return report


def cmd_infer(args: argparse.Namespace) -> dict:
    from lowbit.infer import infer_file

    return infer_file(args.model, args.input, args.out, batch_size=args.batch_size)


def cmd_run(args: argparse.Namespace) -> dict:
    from lowbit.jobs import MAIN_JOB_QAT_RUN, run_main_job
    from lowbit.report_text import inspect_job_text, main_job_text

    result = run_main_job(
        Path(args.out), quick=args.quick, progress=not args.quiet, inspect_texture=args.inspect
    )
    if not args.json:
        report = json.loads((Path(args.out) / MAIN_JOB_QAT_RUN / VERIFY_FILE).read_text())
        print(main_job_text(result, report))
        if "inspect" in result:
            print(inspect_job_text(result["inspect"], report))
    return result


def _bench_options(args: argparse.Namespace):
    """Returns (BenchOptions of the given options, the command line the report records: the
    sweep's main choices always, the other options as given)."""
    from lowbit.bench import BenchOptions

    fields = _given(args, BenchOptions)
    for name in ("recipes", "heads", "losses", "unknown"):
        if name in fields:
            fields[name] = _csv(fields[name])
    options = BenchOptions(**fields)
    typed = vars(args)
    listed = {
        "--data": options.data,
        **{f"--{name}": typed.get(name, ",".join(getattr(options, name)))
           for name in ("recipes", "heads", "losses")},
        "--seeds": options.seeds,
        **{f"--{name.replace('_', '-')}": typed[name]
           for name in ("unknown", "epochs", "verify_n", "per_class", "oe_weight")
           if typed.get(name) is not None},
        "--out": args.out,
    }  # fmt: skip
    command = " ".join(
        ["lowbit bench", *[f"{k} {v}" for k, v in listed.items()]]
        + ["--learn-scale"] * options.learn_scale
        + ["--quick"] * options.quick
    )
    return options, command


def cmd_bench(args: argparse.Namespace) -> dict:
    from lowbit.bench import run_bench
    from lowbit.bench.report import summary_table

    options, command = _bench_options(args)
    results = run_bench(options, Path(args.out), progress=not args.quiet, command=command)
    if not args.json:
        print(summary_table(results))
    return results


def cmd_fewshot(args: argparse.Namespace) -> dict:
    from lowbit.fewshot import evaluate_fewshot

    result = evaluate_fewshot(
        args.run_dir,
        way=args.way,
        shots=tuple(int(k) for k in _csv(args.shots) or ()),
        queries=args.queries,
        episodes=args.episodes,
        methods=_csv(args.methods) or (),
        integer=args.integer,
        seed=args.seed,
        progress=not args.quiet,
    )
    if not args.json:
        print(f"{result['way']}-way, {result['queries']} queries, {result['episodes']} episodes, "
              f"novel {', '.join(result['novel_classes'])} ({result['recipe']}"
              f"{', integer runtime' if result['integer'] else ''})")  # fmt: skip
        for method, by_shot in result["results"].items():
            for shot, row in by_shot.items():
                print(f"{method:9s} {shot}-shot: {100 * row['mean']:.2f} ± {100 * row['ci95']:.2f}")
    return result


def cmd_enroll(args: argparse.Namespace) -> dict:
    from lowbit.errors import ConfigError
    from lowbit.fewshot import enroll_class, remove_class

    options = dict(verify_n=args.verify_n, verify_random=args.verify_n, progress=not args.quiet)
    if (args.remove is None) == (args.class_name is None):
        raise ConfigError("give either --class NAME --images PATH... or --remove NAME")
    if args.remove is not None:
        report = remove_class(args.dir, args.remove, **options)
    else:
        if not args.images:
            raise ConfigError(f"--class {args.class_name}: give support images with --images")
        report = enroll_class(args.dir, args.class_name, args.images, **options)
    if not args.json:
        timing = report["timing"]
        print(f"classes: {', '.join(report['class_names'])}")
        print(f"verify: {report['verify']['mismatches']} mismatches "
              f"({report['verify']['unexplained']} unexplained) in "
              f"{report['verify']['checked_values']:,} codes")  # fmt: skip
        print("timing: " + ", ".join(f"{key} {value:.3f}" for key, value in timing.items()))
    return report


def cmd_predict(args: argparse.Namespace) -> dict:
    from lowbit.fewshot.predict import format_predictions, predict
    from lowbit.fewshot.regions import boxes_from_args, masks_from_args

    rows = predict(
        args.dir,
        args.images,
        masks=masks_from_args(args.mask) if args.mask else None,
        boxes=boxes_from_args(args.box) if args.box else None,
        whole_image=args.whole_image,
    )
    if not args.json:
        print(format_predictions(rows))
    return {"predictions": rows}


def cmd_detect_fit(args: argparse.Namespace) -> dict:
    from lowbit.detect.fit import fit_detector

    options = {
        "layer": args.layer,
        "aggregate_size": args.aggregate,
        "bank_size": args.bank_size,
        "false_alarm_rate": args.false_alarm_rate,
    }
    given = {key: value for key, value in options.items() if value is not None}
    detector = fit_detector(
        args.dir,
        args.data,
        category=args.category,
        train_good=args.train_good,
        seed=args.seed,
        **given,
    )
    keys = ("category", "layer", "aggregate", "bank_size", "image_threshold", "pixel_threshold")
    keys += ("fit_images", "validation_images", "validation_flagged", "bank_file")
    graphs = {"graph_files": [entry["file"] for entry in detector["graphs"].values()]}
    return {key: detector[key] for key in keys} | graphs


def cmd_inspect(args: argparse.Namespace) -> list:
    from lowbit.detect.inspect import format_row, inspect, json_row, write_masks

    rows = inspect(args.dir, args.images, category=args.category)
    paths = write_masks(rows, args.masks_out) if args.masks_out else [None] * len(rows)
    if not args.json:
        for row in rows:
            print(format_row(row))
    return [json_row(row, path) for row, path in zip(rows, paths)]
