"""`run_bench`: trains, exports, verifies and measures every configuration of a sweep.

A configuration is (recipe, head, loss, seed). Every configuration, fp32 included, starts from one
fp32 pre-training run of the same head, loss and seed (`fp32_pretrain`, not a result row) and
trains `epochs` more epochs at its recipe: the fp32 row gets the same training budget as the
quantized rows (comparing QAT after pre-training with the pre-training run alone would credit
quantization with the extra epochs). Run directories live under `<out>/runs/`.

Resume: a configuration is finished when its run has metrics.json for the same training config
and, for a quantized recipe, verify.json from its export; a finished configuration is never
retrained. A partial run continues from its checkpoint (`train(..., resume=True)`), ending with
the same weights as an uninterrupted one. The measured row is cached in the run directory
(bench_row.json) with the measurement settings, so a resumed sweep only measures what is new.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from lowbit.artifacts import VERIFY_FILE, read_json
from lowbit.errors import ConfigError
from lowbit.io import atomic_write_json
from lowbit.lock import writer_lock
from lowbit.manifest import read_description
from lowbit.quant.recipes import RECIPE_NAMES, get_recipe

log = logging.getLogger(__name__)

ROW_NAME = "bench_row.json"
ROW_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """One sweep. `resolved()` turns `quick` into its small settings; results.json holds that."""

    data: str = "builtin"
    recipes: tuple[str, ...] = RECIPE_NAMES
    heads: tuple[str, ...] = ("cosine",)
    losses: tuple[str, ...] = ("logitnorm",)
    seeds: int = 1  # seeds 0 .. seeds-1
    epochs: int | None = None  # None: 15 (like `lowbit run`), 1 with quick
    verify_n: int | None = None  # real and random verify inputs each; None: 1000, 64 with quick
    unknown: tuple[str, ...] | None = None  # held-out classes; None: the data set's default
    width: int | None = None  # None: conv4's 64, 16 with quick
    image_size: int | None = None  # None: 32, 16 with quick
    fewshot_episodes: int | None = None  # None: 200, 20 with quick
    per_class: int | None = None  # images per class (TrainConfig.per_class); 120 with quick
    latency_repeats: int | None = None  # None: 5, 2 with quick
    learn_scale: bool = False  # cosine heads train their scale (TrainConfig.learn_scale)
    oe_weight: float | None = None  # outlier exposure weight; None: TrainConfig's default
    quick: bool = False  # tiny settings for smoke tests: minutes, not tens of minutes

    def __post_init__(self) -> None:
        for name in self.recipes:
            get_recipe(name)
        if not self.recipes or not self.heads or not self.losses:
            raise ConfigError("bench: --recipes, --heads and --losses each need at least one entry")
        if self.seeds < 1:
            raise ConfigError(f"bench: --seeds {self.seeds} must be at least 1")

    def resolved(self) -> BenchOptions:
        quick = self.quick

        def pick(value, normal, small):
            return value if value is not None else (small if quick else normal)

        return replace(
            self,
            epochs=pick(self.epochs, 15, 1),
            verify_n=pick(self.verify_n, 1000, 64),
            width=pick(self.width, None, 16),
            image_size=pick(self.image_size, 32, 16),
            fewshot_episodes=pick(self.fewshot_episodes, 200, 20),
            per_class=pick(self.per_class, None, 120),
            latency_repeats=pick(self.latency_repeats, 5, 2),
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def configurations(options: BenchOptions) -> list[dict]:
    """Returns the sweep's configurations in training order (fp32 first within each group)."""
    recipes = sorted(options.recipes, key=lambda r: (r != "fp32", RECIPE_NAMES.index(r)))
    return [
        {"recipe": recipe, "head": head, "loss": loss, "seed": seed}
        for seed in range(options.seeds)
        for head in options.heads
        for loss in options.losses
        for recipe in recipes
    ]


PRETRAIN = "fp32_pretrain"  # the shared float pre-training run of a (head, loss, seed) group


def run_dir_of(out: Path, config: dict) -> Path:
    return (
        out
        / "runs"
        / f"{config['head']}_{config['loss']}"
        / f"seed{config['seed']}"
        / (config["recipe"])
    )


def train_config(options: BenchOptions, config: dict, out: Path):
    """Returns the TrainConfig of one configuration: initialised from its group's pre-training."""
    from lowbit.train import TrainConfig

    init = None
    recipe = config["recipe"]
    if recipe == PRETRAIN:
        recipe = "fp32"
    else:
        init = str(run_dir_of(out, {**config, "recipe": PRETRAIN}))
    return TrainConfig(
        recipe=recipe,
        head=config["head"],
        loss=config["loss"],
        seed=config["seed"],
        data=options.data,
        epochs=options.epochs,
        width=options.width,
        image_size=options.image_size,
        unknown=options.unknown,
        per_class=options.per_class,
        learn_scale=options.learn_scale and config["head"] == "cosine",
        init=init,
        **({} if options.oe_weight is None else {"oe_weight": options.oe_weight}),
    )


def is_finished(run_dir: Path, train_cfg, splits) -> bool:
    """True when the run holds metrics.json for `train_cfg` and (quantized) verify.json;
    ConfigError when it was trained with this config on other data than `splits`."""
    from lowbit.train.reuse import is_trained

    if not is_trained(run_dir, train_cfg, splits):
        return False
    return train_cfg.recipe == "fp32" or (run_dir / VERIFY_FILE).is_file()


def _measure_key(options: BenchOptions) -> dict:
    return {
        "row_version": ROW_VERSION,
        "verify_n": options.verify_n,
        "fewshot_episodes": options.fewshot_episodes,
        "latency_repeats": options.latency_repeats,
    }


def _cached_row(run_dir: Path, options: BenchOptions) -> dict | None:
    path = run_dir / ROW_NAME
    if not path.is_file():
        return None
    cached = json.loads(path.read_text())
    if cached.get("key") != _measure_key(options):
        return None
    row = cached["row"]
    if "model_bits" in row and "deployed_bits" not in row:  # a row cached before the rename
        row["deployed_bits"] = row.pop("model_bits")
    return row


def run_config(options: BenchOptions, config: dict, out: Path, splits, *, progress: bool) -> dict:
    """Trains (or reuses), exports, verifies and measures one configuration; returns its row."""
    from lowbit.bench import collect
    from lowbit.deploy import export_run, measure_view_scores
    from lowbit.train import load_run
    from lowbit.train.reuse import train_or_reuse
    from lowbit.verify.run import verify_run

    run_dir = run_dir_of(out, config)
    cfg = train_config(options, config, out)
    finished = is_finished(run_dir, cfg, splits)
    if finished and (row := _cached_row(run_dir, options)) is not None:
        return {**row, "reused": True}
    start = time.perf_counter()
    exported = config["recipe"] != "fp32"
    # an exported run's view scores are measured on its integer graph (measure_view_scores):
    # the same numbers as the fake-quant model's, in a fraction of the time
    views = {"ood_views": 1} if exported else {}
    metrics = train_or_reuse(cfg, run_dir, progress, splits=splits, **views)
    train_seconds = None if finished else round(time.perf_counter() - start, 1)
    description = verify = None
    if exported:
        if finished:
            description = read_description(run_dir)  # checked against its manifest
            verify = read_json(run_dir / VERIFY_FILE, "verify")
        else:
            _, description = export_run(run_dir)
            n = options.verify_n
            verify = verify_run(run_dir, n=n, random=n, progress=progress)
        metrics = measure_view_scores(run_dir, splits=splits)
    model, _ = load_run(run_dir)
    from lowbit.bench.bops import model_bops

    row = {
        **config,
        "run_dir": str(run_dir),
        "accuracy": metrics["accuracy"],
        "val_accuracy": metrics.get("val_accuracy"),
        "ood": metrics.get("ood"),
        "ood_default": metrics.get("ood_default"),
        "roc": collect.ood_roc(model, splits),
        "fewshot": collect.fewshot(run_dir, splits, options.fewshot_episodes, config["seed"]),
        "deployed_bits": collect.deployed_size(model, description),
        "bops": model_bops(model),
        "layers": collect.layer_chart_rows(description) if description else None,
        "latency_ms": None,
        "verify": None,
        "confusion_matrix": metrics.get("confusion_matrix"),
        "class_names": metrics.get("class_names"),
        "train_seconds": train_seconds,
    }
    if description is not None:
        row["latency_ms"] = collect.latency_ms(run_dir, splits.test.x, options.latency_repeats)
        row["verify"] = {
            key: verify[key] for key in ("checked_values", "mismatches", "unexplained")
        } | {"ok": verify["unexplained"] == 0}
    row["seconds"] = round(time.perf_counter() - start, 1)  # train + export + verify + measure
    atomic_write_json(run_dir / ROW_NAME, {"key": _measure_key(options), "row": row})
    return {**row, "reused": finished}


def run_bench(
    options: BenchOptions, out: str | Path, *, progress: bool = True, command: str | None = None
) -> dict:
    """Runs the sweep into `out`; writes results.json/.csv, report.md and plots; returns results."""
    from lowbit.bench.plots import write_plots
    from lowbit.bench.report import build_results, write_reports
    from lowbit.data import load_splits

    options = options.resolved()
    out = Path(out)
    with writer_lock(out):  # one sweep per folder; each run directory is locked by its writer
        configs = configurations(options)
        needed = list(configs)  # every configuration starts from its group's pre-training run
        for config in configs:
            pretrain = {**config, "recipe": PRETRAIN}
            if pretrain not in needed:
                needed.insert(needed.index(config), pretrain)
        started = time.perf_counter()
        rows, splits_by_seed = [], {}
        bar = tqdm(needed, desc="bench", unit="config", file=sys.stderr, disable=not progress)
        for config in bar:
            name = f"{config['recipe']} {config['head']} {config['loss']} seed {config['seed']}"
            bar.set_description(f"bench: {name}")
            seed = config["seed"]
            if seed not in splits_by_seed:
                splits_by_seed[seed] = load_splits(
                    options.data,
                    image_size=options.image_size,
                    unknown=list(options.unknown) if options.unknown else None,
                    seed=seed,
                    per_class=options.per_class,
                )
            if config["recipe"] == PRETRAIN:
                from lowbit.train.reuse import train_or_reuse

                cfg = train_config(options, config, out)
                metrics = train_or_reuse(
                    cfg, run_dir_of(out, config), False, splits=splits_by_seed[seed]
                )
                log.info("%s: accuracy %.3f", name, metrics["accuracy"])
                continue
            row = run_config(options, config, out, splits_by_seed[seed], progress=False)
            rows.append(row)
            log.info("%s: accuracy %.3f%s", name, row["accuracy"], " (reused)" * row["reused"])
        bar.close()
        results = build_results(options, rows, wall_seconds=time.perf_counter() - started)
        results["command"] = command
        plots = write_plots(results, out)
        write_reports(results, out, plots, command)
        return results
