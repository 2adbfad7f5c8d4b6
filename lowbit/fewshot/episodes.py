"""The episodic few-shot protocol on a run's held-out (novel) classes: `evaluate_fewshot`.

Base classes train the backbone; the run's unknown classes are the novel ones. An N-way K-shot
episode draws N novel classes, K support and Q query images of each (without replacement, from
a generator seeded by (seed, K)); a classifier built from the support features labels the
queries. Reported: mean accuracy over the episodes and the 95% confidence interval
1.96 * std / sqrt(episodes) (Chen et al. 2019, arXiv 1904.04232, section 4.1).

Enrollment methods, both on frozen features:
- `imprint`: class weight = mean of the L2-normalized support features (Qi et al. 2018).
- `finetune`: a new cosine head (Baseline++) trained on the support features with softmax
  cross-entropy. It starts from the imprinted weights instead of Baseline++'s random init: the
  result is then a deterministic function of the support set (no extra seed), and it can only
  improve on the start it shares with `imprint`.
For a quantized recipe the class weights are quantized per row to the head's weight format
before scoring, as an enrolled class is in the deployed model (lowbit.fewshot.enroll).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lowbit.artifacts import CONFIG_FILE, DESCRIPTION_FILE, INT_GRAPH_FILE
from lowbit.core.integers import int_range, quantize
from lowbit.errors import ConfigError
from lowbit.fewshot.features import l2_normalize, model_features, runtime_features
from lowbit.manifest import read_description

log = logging.getLogger(__name__)

METHODS = ("imprint", "finetune")
FINETUNE_STEPS = 100  # full-batch gradient steps; Baseline++ runs 100 epochs over the support set
FINETUNE_LR = 0.5  # SGD with momentum 0.9 on the class weights (unit-norm rows at the start)
FINETUNE_SCALE = 10.0  # cosine logit scale while fine-tuning: the heads' default (ModelConfig)
EPISODE_CHUNK = 100  # episodes scored at once: bounds memory at ~25 MB for 256-d features


def sample_episodes(
    labels: np.ndarray, *, way: int, shot: int, queries: int, episodes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (support [E, way, shot], query [E, way, queries]) indices into `labels`."""
    classes = np.unique(labels)
    rng = np.random.default_rng([seed, shot])
    members = {int(c): np.flatnonzero(labels == c) for c in classes}
    support = np.empty((episodes, way, shot), dtype=np.int64)
    query = np.empty((episodes, way, queries), dtype=np.int64)
    for episode in range(episodes):
        for position, cls in enumerate(rng.choice(classes, size=way, replace=False)):
            drawn = rng.choice(members[int(cls)], size=shot + queries, replace=False)
            support[episode, position], query[episode, position] = drawn[:shot], drawn[shot:]
    return support, query


def quantize_rows(rows: np.ndarray, bits: int | None, pow2: bool = True) -> np.ndarray:
    """Returns rows normalized then quantized per row like CosineHead.class_weights (float64)."""
    rows = l2_normalize(rows)
    if bits is None:
        return rows
    _, levels = int_range(bits, signed=True, narrow=True)
    scale = np.maximum(np.abs(rows).max(axis=-1, keepdims=True), 1e-12) / levels
    if pow2:
        scale = 2.0 ** np.ceil(np.log2(scale))
    return quantize(rows, scale, -levels, levels) * scale


def cosine_ce(
    weights: np.ndarray, g: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (loss [E], gradient wrt weights [E, C, F]) of the mean softmax cross-entropy of
    logits scale * cos(g_n, w_c), for unit features g [E, N, F] and one-hot target [N, C]."""
    norms = np.sqrt((weights**2).sum(axis=-1, keepdims=True))
    unit = weights / norms
    logits = FINETUNE_SCALE * np.einsum("enf,ecf->enc", g, unit)
    logits -= logits.max(axis=-1, keepdims=True)
    log_prob = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    loss = -(log_prob * target).sum(axis=-1).mean(axis=-1)
    grad_logits = (np.exp(log_prob) - target) / len(target)
    grad_unit = FINETUNE_SCALE * np.einsum("enc,enf->ecf", grad_logits, g)
    # through the normalization: only the component orthogonal to the row moves it
    radial = (grad_unit * unit).sum(axis=-1, keepdims=True) * unit
    return loss, (grad_unit - radial) / norms


def finetune_rows(support: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Returns cosine-head weights [E, way, F] trained on normalized support [E, way, shot, F]."""
    episodes, way, shot, dim = support.shape
    g = support.reshape(episodes, way * shot, dim)
    target = np.repeat(np.eye(way), shot, axis=0)  # [way*shot, way]
    weights, velocity = init.copy(), np.zeros_like(init)
    for _ in range(FINETUNE_STEPS):
        velocity = 0.9 * velocity + cosine_ce(weights, g, target)[1]
        weights = weights - FINETUNE_LR * velocity
    return weights


def episode_accuracies(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    way: int,
    shot: int,
    queries: int,
    episodes: int,
    method: str,
    seed: int = 0,
    head_bits: int | None = None,
    pow2: bool = True,
) -> np.ndarray:
    """Returns the query accuracy of every episode (float64 [episodes])."""
    if method not in METHODS:
        raise ConfigError(f"unknown few-shot method {method!r}: choose from {', '.join(METHODS)}")
    support_index, query_index = sample_episodes(
        labels, way=way, shot=shot, queries=queries, episodes=episodes, seed=seed
    )
    normalized = l2_normalize(features)
    truth = np.repeat(np.arange(way), queries)
    accuracies = []
    for start in range(0, episodes, EPISODE_CHUNK):
        support = normalized[support_index[start : start + EPISODE_CHUNK]]
        rows = support.mean(axis=2)  # imprinted prototypes [E, way, F]
        if method == "finetune":
            rows = finetune_rows(support, rows)
        rows = l2_normalize(quantize_rows(rows, head_bits, pow2))
        query = normalized[query_index[start : start + EPISODE_CHUNK]]
        query = query.reshape(len(rows), way * queries, -1)
        predicted = np.einsum("eqf,ecf->eqc", query, rows).argmax(axis=-1)
        accuracies.append((predicted == truth).mean(axis=1))
    return np.concatenate(accuracies)


def summarize(accuracies: np.ndarray) -> dict[str, float]:
    """Returns {"mean", "ci95"}: 1.96 standard errors of the mean over episodes."""
    return {
        "mean": float(accuracies.mean()),
        "ci95": float(1.96 * accuracies.std() / np.sqrt(len(accuracies))),
    }


def novel_pool(run_dir: Path, record: dict, way: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Returns (novel class names, their images x, labels indexing the names)."""
    from lowbit.train.run import splits_for

    novel = list(record.get("unknown_names") or [])
    if len(novel) < way:
        hint = f"`--way {len(novel)}`, or " if len(novel) >= 2 else ""
        raise ConfigError(
            f"{run_dir / CONFIG_FILE}: the run holds out {len(novel)} novel class(es) "
            f"{novel}, {way}-way episodes need {way}; use {hint}train with "
            "`--unknown a,b,c,d,e` to hold out more"
        )
    splits = splits_for(record, run_dir / CONFIG_FILE)
    return novel, splits.ood.x, np.asarray(splits.ood_types, dtype=np.int64)


def _integer_runtime(run_dir: Path, model):
    """Returns a Runtime of run_dir/model.int.onnx when it was exported from this run, else of
    the model lowered in memory (the same graph `lowbit export` would write)."""
    from lowbit.runtime import Runtime

    description_path = run_dir / DESCRIPTION_FILE
    if description_path.is_file() and (run_dir / INT_GRAPH_FILE).is_file():
        source = read_description(run_dir).get("source_run", ".")
        if (run_dir / source).resolve() == run_dir.resolve():
            return Runtime(run_dir / INT_GRAPH_FILE)
    from lowbit.export.lower import lower_model

    log.info("%s: no model.int.onnx of this run; lowering the model in memory", run_dir)
    return Runtime(lower_model(model)[0])


def run_features(run_dir: Path, model, x: np.ndarray, integer: bool) -> np.ndarray:
    """Returns the run's features of x: from the integer runtime, or the torch model."""
    if integer:
        if model.recipe.is_float:
            raise ConfigError(f"{run_dir}: an fp32 run has no integer graph; drop --integer")
        return runtime_features(_integer_runtime(run_dir, model), x)
    return model_features(model, x)


def evaluate_fewshot(
    run_dir: str | Path,
    *,
    way: int = 5,
    shots: tuple[int, ...] = (1, 5),
    queries: int = 15,
    episodes: int = 600,
    methods: tuple[str, ...] = ("imprint",),
    integer: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Returns N-way K-shot accuracy (mean, ci95) per method and shot on the run's novel classes."""
    from lowbit.train import load_run

    if way < 2 or queries < 1 or episodes < 1 or not shots or min(shots) < 1:
        raise ConfigError("few-shot: need way >= 2, shots >= 1, queries >= 1 and episodes >= 1")
    for method in methods:
        if method not in METHODS:
            raise ConfigError(f"unknown few-shot method {method!r}: choose from {METHODS}")
    run_dir = Path(run_dir)
    model, record = load_run(run_dir)
    novel, x, labels = novel_pool(run_dir, record, way)
    counts = np.bincount(labels, minlength=len(novel))
    needed = max(shots) + queries
    if counts.min() < needed:
        small = novel[int(counts.argmin())]
        raise ConfigError(
            f"novel class {small!r} has {counts.min()} images; {max(shots)}-shot episodes with "
            f"{queries} queries need {needed}: lower --queries or the shots"
        )
    features = run_features(run_dir, model, x, integer)
    recipe = model.recipe
    results: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        results[method] = {}
        for shot in shots:
            accuracies = episode_accuracies(
                features,
                labels,
                way=way,
                shot=shot,
                queries=queries,
                episodes=episodes,
                method=method,
                seed=seed,
                head_bits=recipe.head_weight_bits,
                pow2=recipe.pow2_scales,
            )
            results[method][str(shot)] = summarize(accuracies)
            if progress:
                log.info("%s %d-shot: %s", method, shot, results[method][str(shot)])
    return {
        "way": way,
        "queries": queries,
        "episodes": episodes,
        "novel_classes": novel,
        "results": results,
        "recipe": recipe.name,
        "integer": integer,
    }
