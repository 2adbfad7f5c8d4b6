"""`lowbit eval`'s text report: the run's recipe and training, accuracy with its sampling error,
per-class accuracy, the confusion matrix, every unknown-type score, and both model sizes.

Pure formatting of metrics.json (lowbit.train.evaluation), config.json and, when the run has been
exported into its own folder, model.json; `--json` prints the metrics themselves.
"""

from __future__ import annotations

import math

from lowbit.artifacts import deployed_bits_of
from lowbit.models.accounting import PARAMETER_BITS_RULE
from lowbit.tables import format_table

DEPLOYED_BITS_RULE = "as stored after export: weight codes, thresholds, head rows (model.json)"


def accuracy_standard_error(accuracy: float, n: int) -> float:
    """Returns sqrt(p (1 - p) / n): the binomial standard error of an accuracy over n samples."""
    return math.sqrt(accuracy * (1.0 - accuracy) / n) if n else float("nan")


def recipe_line(recipe: dict) -> str:
    """Returns e.g. "w1a2: 1-bit weights, 2-bit activations; 8-bit input, first conv, head"."""
    if recipe.get("weight_bits") is None:
        return f"{recipe['name']}: float weights and activations"
    weights = "ternary" if recipe["weight_bits"] == 2 and recipe.get("ternary") else "signed"
    if recipe["weight_bits"] == 1:
        weights = "bipolar"
    scales = "per-channel" if recipe.get("per_channel") else "per-tensor"
    kind = "power-of-two" if recipe.get("pow2_scales") else "float"
    return (
        f"{recipe['name']}: {recipe['weight_bits']}-bit {weights} weights, "
        f"{recipe['act_bits']}-bit activations; input {recipe['input_bits']} bits, first conv "
        f"{recipe['first_weight_bits']}, head {recipe['head_weight_bits']}; {scales} "
        f"{kind} weight scales"
    )


def training_line(metrics: dict, train: dict) -> str:
    """Returns "loss logitnorm (τ 1.0), 15 epochs, seed 0, data builtin, ..."."""
    loss = metrics.get("loss") or train.get("loss") or "?"
    tau = metrics.get("tau")
    parts = [f"loss {loss}" + (f" (τ {tau:g})" if tau is not None else "")]
    epochs = metrics.get("epochs", train.get("epochs"))
    seed = metrics.get("seed", train.get("seed"))
    parts += [f"{epochs} epoch{'s' * (epochs != 1)}", f"seed {seed}"]
    parts.append(f"data {train.get('data', '?')}")
    if train.get("init"):
        parts.append(f"initialised from {train['init']}")
    if train.get("oe_weight"):
        parts.append(f"outlier exposure weight {train['oe_weight']:g}")
    return ", ".join(parts)


def model_line(metrics: dict, model: dict) -> str:
    """Returns "conv4 width 64, cosine head (scale 10.0), 32x32 input"."""
    head = metrics.get("head") or model.get("head")
    scale = metrics.get("cosine_scale")
    head_text = f"{head} head" + (f" (scale {scale:g})" if scale is not None else "")
    size = model.get("image_size")
    return f"{model.get('backbone', '?')} width {model.get('width', '?')}, {head_text}, " + (
        f"{size}x{size} input" if size else "input size unknown"
    )


def per_class_table(metrics: dict) -> str:
    """Returns class, test images and accuracy per class (the confusion matrix's row sums)."""
    names = metrics["class_names"]
    counts = [sum(row) for row in metrics["confusion_matrix"]]
    rows = []
    for name, count in zip(names, counts):
        value = metrics["per_class_accuracy"].get(name)
        rows.append([name, f"{count:,}", "–" if value is None else f"{100 * value:.1f} %"])
    return format_table(["class", "test images", "accuracy"], rows, align="lrr")


def confusion_table(metrics: dict) -> str:
    """Returns the confusion matrix: rows the true class, columns the predicted one, by number."""
    names = metrics["class_names"]
    header = ["true \\ predicted", *[str(j) for j in range(len(names))]]
    rows = [[f"{i} {name}", *map(str, row)] for i, (name, row) in enumerate(
        zip(names, metrics["confusion_matrix"])
    )]  # fmt: skip
    return format_table(header, rows, align="l" + "r" * len(names))


def ood_table(metrics: dict, deployed: str | None = None) -> str:
    """Returns every unknown-type score's AUROC and FPR95; the deployed one marked."""
    deployed = deployed or metrics.get("ood_default")
    rows = []
    for name, entry in metrics["ood"].items():
        label = f"{name} (deployed)" if name == deployed else name
        rows.append([label, f"{entry['auroc']:.3f}", f"{entry['fpr95']:.3f}"])
    return format_table(["unknown-type score", "AUROC", "FPR95"], rows, align="lrr")


def size_lines(metrics: dict, description: dict | None) -> list[str]:
    """Returns the model's two sizes, each with what it counts."""
    rows = [["parameter bits", f"{metrics['parameter_bits']:,}", PARAMETER_BITS_RULE]]
    # the two differ: export replaces each BatchNorm's two floats by integer thresholds
    if description is not None:
        rows.append(["deployed bits", f"{deployed_bits_of(description)['total']:,}",
                     DEPLOYED_BITS_RULE])  # fmt: skip
    else:
        rows.append(["deployed bits", "–", "counted at export (`lowbit export RUN`)"])
    return format_table(["model size", "bits", "what it counts"], rows, align="lrl").splitlines()


def eval_report(
    metrics: dict, record: dict, description: dict | None = None, run_dir: str = ""
) -> str:
    """Returns the text report of `lowbit eval` (see the module docstring).

    `record` is the run's config.json, `description` its model.json (None before export); the
    score marked deployed is model.json's, else the export default metrics.json names.
    """
    train = record.get("train") or {}
    lines = [f"run {run_dir}".rstrip()] if run_dir else []
    lines += [
        f"recipe    {recipe_line(record.get('recipe') or {'name': metrics['recipe']})}",
        f"model     {model_line(metrics, record.get('model') or {})}",
        f"training  {training_line(metrics, train)}",
    ]
    n = metrics["num_test"]
    if metrics.get("accuracy") is not None:
        error = accuracy_standard_error(metrics["accuracy"], n)
        text = f"{100 * metrics['accuracy']:.2f} % ± {100 * error:.2f} (standard error, {n:,} "
        text += "test images)"
        if metrics.get("val_accuracy") is not None:
            text += f"; validation {100 * metrics['val_accuracy']:.2f} %"
        lines.append(f"accuracy  {text}")
    lines += ["", per_class_table(metrics), "", "confusion matrix", confusion_table(metrics), ""]
    if metrics.get("ood"):
        unknown = ", ".join(record.get("unknown_names") or []) or "held-out types"
        lines += [
            f"unknown types: {metrics['num_ood']:,} images of {unknown} against the {n:,} test "
            "images",
            "(AUROC: higher is better; FPR95: share of unknowns accepted while 95% of knowns are)",
        ]
        deployed = None
        ood = (description or {}).get("ood") or {}
        if ood.get("score"):
            from lowbit.core.scores import detector_name, ood_views

            deployed = detector_name(ood["score"], ood_views(ood))
        lines += [ood_table(metrics, deployed), ""]
    else:
        lines += ["unknown types: none held out (train with --unknown A,B to measure them)", ""]
    lines += size_lines(metrics, description)
    return "\n".join(lines)
