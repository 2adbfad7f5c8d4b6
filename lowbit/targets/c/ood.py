"""The deployed unknown-type score in the C target, and its tolerance against lowbit's numpy.

model.json's "ood" names one score (lowbit/core/scores.py, lowbit/core/feature_scores.py) and a
threshold; the generated C computes the same float64 formula after the head and sets
`result->ood_score` and `result->known = ood_score >= <PREFIX>_OOD_THRESHOLD`:
- logit scores (msp, max_logit, energy) from the float64 logits, the largest logit subtracted
  before exp (`lb_logsumexp`);
- feature scores (prototype, mahalanobis, rel_mahalanobis, residual, vim) from the head's
  integer input f (the feature codes `backbone.features`): z = f / sqrt(n) with the exact
  integer n = sum f^2, then dot products with the fitted statistics of model.ood.npz, emitted as
  exact double literals; vim adds the logits' energy.
With `"views": V > 1` (prototype, mahalanobis, rel_mahalanobis, residual) the feature score reads
f summed over V dihedral views of the input, one pass of the integer body per view (views.py).

The invariant that makes the tolerance small: every input of the score is bit-identical in C and
numpy (the logits: the C tail repeats the graph's float64 ops; z: n < 2^53 is exact and sqrt and
division are correctly rounded; the statistics: hex-float literals), so the two differ only in
the order of the dot products' sums and in libm's exp/log. `score_tolerance` bounds that.
With views the caller passes the summed features: still exact integers, their n < 2^53 checked
when the C is generated (views.py), so z stays bit-identical and the same bound holds for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.artifacts import STATS_FILE
from lowbit.core.feature_scores import FEATURE_SCORES, normalize_rows, residual_norm
from lowbit.core.scores import LOGIT_SCORES, SCORES
from lowbit.errors import ModelFileError
from lowbit.targets.c import templates as T
from lowbit.targets.c.pack import c_array, c_number, c_type
from lowbit.targets.c.plan import CPlan, Tensor
from lowbit.targets.c.views import check_views, summed_features, views_code

LEGACY_SCORE = "msp"  # what lowbit predict deploys when model.json names no score
STATS_USED = {
    "prototype": ("prototypes",),
    "mahalanobis": ("class_whitening", "class_means_white"),
    "rel_mahalanobis": (
        "class_whitening",
        "class_means_white",
        "background_whitening",
        "background_mean_white",
    ),
    "residual": ("global_mean", "principal_complement"),
    "vim": ("global_mean", "principal_complement", "vim_alpha"),
}


@dataclass(frozen=True)
class OodProgram:
    """The C of the deployed score: constants, kernels, the statements after the head."""

    score: str
    threshold: float | None
    views: int  # passes of the integer body whose head-input features the score sums
    constants: list[str]
    kernels: dict[str, str]
    code: str  # runs after view 0's result copy: the other views, then ood_score and known
    buffers: list[Tensor]  # double scratch, live only while the score is computed
    reads: list[Tensor]  # graph tensors the score reads after the last step
    stats_bytes: int


def _check_stats(stats: dict, name: str, features: int, classes: int, where: str) -> None:
    """ModelFileError unless every array `name` uses is there and fits F features, K classes."""
    missing = [key for key in STATS_USED[name] if key not in stats]
    if missing:
        raise ModelFileError(f"{where}: score {name!r} needs arrays {missing}; re-export")
    rows = {  # free row counts; a 0-d array has none and fails the shape check below
        key: (np.shape(stats.get(key, ())) or (0,))[0]
        for key in ("class_whitening", "background_whitening", "principal_complement")
    }
    expected = {
        "prototypes": (classes, features),
        "class_whitening": (rows["class_whitening"], features),
        "class_means_white": (classes, rows["class_whitening"]),
        "background_whitening": (rows["background_whitening"], features),
        "background_mean_white": (rows["background_whitening"],),
        "global_mean": (features,),
        "principal_complement": (rows["principal_complement"], features),
        "vim_alpha": (),
    }
    for key in STATS_USED[name]:
        if np.shape(stats[key]) != expected[key]:
            raise ModelFileError(
                f"{where}: array {key!r} has shape {list(np.shape(stats[key]))}, the graph needs "
                f"{list(expected[key])} ({features} features, {classes} classes); re-export"
            )


def _logit_code(name: str, classes: int) -> str:
    if name == "max_logit":  # argmax is the first index of the largest logit
        return "    result->ood_score = result->logits[result->argmax];\n"
    value = "exp(top - lse)" if name == "msp" else "lse"
    return (
        "    {\n"
        f"        double top, lse = lb_logsumexp(result->logits, {classes}, &top);\n"
        f"        result->ood_score = {value};\n"
        "    }\n"
    )


def _squares_head_input(plan: CPlan) -> bool:
    """True when the graph's square sum `feature_sq` is n = sum f^2 of the head's input f."""
    if plan.feature_sq is None:
        return False
    reduce = plan.producer.get(plan.feature_sq.name)
    square = plan.producer.get(reduce.input[0]) if reduce is not None else None
    return square is not None and list(square.input) == [plan.head_input.name] * 2


def _feature_code(
    plan: CPlan, name: str, arrays: dict[str, str], stats: dict, f: Tensor
) -> tuple[str, list[Tensor]]:
    """(C statements, scratch buffers) of a feature score on the integer features `f`: the
    head's input, or its sum over views."""
    features, classes = f.size, plan.logits.size
    z = plan.buffer("ood.unit_features", np.float64, (features,))
    lines = ["    {\n", "        int64_t n = 0;\n"]
    if f is plan.head_input and _squares_head_input(plan):  # the cosine head's exact n
        lines[1] = f"        int64_t n = (int64_t){plan.feature_sq.var}[0];\n"
    else:
        lines.append(
            f"        for (i = 0; i < {features}; ++i) n += (int64_t){f.var}[i] * {f.var}[i];\n"
        )
    short = T.SHORT_TYPES[c_type(f.dtype)]
    lines.append(f"        lb_unit_features_{short}({f.var}, {features}, n, {z.var});\n")
    if name == "prototype":
        lines.append(
            f"        result->ood_score = lb_prototype_score({z.var}, {features}, "
            f"{arrays['prototypes']}, {classes});\n    }}\n"
        )
        return "".join(lines), [z]
    if name in ("residual", "vim"):
        rows = np.shape(stats["principal_complement"])[0]
        residual = (
            f"lb_residual_norm({z.var}, {features}, {arrays['global_mean']}, "
            f"{arrays['principal_complement']}, {rows})"
        )
        if name == "residual":
            lines.append(f"        result->ood_score = -{residual};\n    }}\n")
        else:  # energy - alpha |z - P z| (Wang et al. 2022, eq. 5-7; feature_scores.py)
            lines.append(
                "        {\n"
                f"            double top, lse = lb_logsumexp(result->logits, {classes}, &top);\n"
                f"            result->ood_score = lse - {arrays['vim_alpha']}[0] * {residual};\n"
                "        }\n    }\n"
            )
        return "".join(lines), [z]
    background = name == "rel_mahalanobis"
    distances = plan.buffer("ood.distances", np.float64, (classes + background,))
    d = distances.var

    def white(prefix: str, means: str, count: int, offset: str) -> str:
        rows = np.shape(stats[f"{prefix}_whitening"])[0]
        return (
            f"        lb_white_distances({z.var}, {features}, {arrays[f'{prefix}_whitening']}, "
            f"{rows}, {arrays[means]}, {count}, {d}{offset});\n"
        )

    def term(c: str) -> str:  # MD_c - MD_0 (Ren et al. 2021, eq. 3) or MD_c
        return f"{d}[{c}] - {d}[{classes}]" if background else f"{d}[{c}]"

    lines.append(white("class", "class_means_white", classes, ""))
    if background:
        lines.append(white("background", "background_mean_white", 1, f" + {classes}"))
    lines.append(
        "        {\n            int c;\n"
        f"            double best = {term('0')};\n"
        f"            for (c = 1; c < {classes}; ++c)\n"
        f"                if ({term('c')} < best) best = {term('c')};\n"
        "            result->ood_score = -best;\n        }\n    }\n"
    )
    return "".join(lines), [z, distances]


def plan_ood(plan: CPlan, ood: dict | None, stats: dict | None, prefix: str) -> OodProgram:
    """Returns the C of model.json's deployed score; ModelFileError when it cannot be built."""
    ood = ood or {}
    name = ood.get("score") or LEGACY_SCORE
    threshold = ood.get("threshold")
    if name not in SCORES:
        raise ModelFileError(f"model.json: ood.score {name!r} is not one of {', '.join(SCORES)}")
    if threshold is not None and not (
        isinstance(threshold, int | float) and np.isfinite(threshold)
    ):
        raise ModelFileError(f"model.json: ood.threshold {threshold!r} is not a finite number")
    views = check_views(plan, ood, name)
    classes = plan.logits.size
    constants, kernels, reads, buffers, stats_bytes = [], {}, [], [], 0
    if name in LOGIT_SCORES:
        if name != "max_logit":
            kernels["logsumexp"] = T.LOGSUMEXP
        code = _logit_code(name, classes)
    else:
        where = ((ood.get("stats") or {}).get("file")) or STATS_FILE
        if stats is None:
            raise ModelFileError(
                f"model.json: ood.score {name!r} needs its feature statistics ({where}); "
                "re-export the model with them"
            )
        _check_stats(stats, name, plan.head_input.size, classes, where)
        arrays = {}
        for key in STATS_USED[name]:
            values = np.asarray(stats[key], dtype=np.float64)
            arrays[key] = f"lb_ood_{key}"
            constants.append(c_array(arrays[key], np.float64, values))
            stats_bytes += values.size * values.itemsize
        f = plan.head_input if views == 1 else summed_features(plan)
        short = T.SHORT_TYPES[c_type(f.dtype)]
        kernels[f"unit_features_{short}"] = T.UNIT_FEATURES.substitute(x=short, X=c_type(f.dtype))
        if name == "prototype":
            kernels["prototype_score"] = T.PROTOTYPE
        elif name in ("residual", "vim"):
            kernels["residual_norm"] = T.RESIDUAL_NORM
            if name == "vim":
                kernels["logsumexp"] = T.LOGSUMEXP
        else:
            kernels["white_distances"] = T.WHITE_DISTANCES
        code, buffers = _feature_code(plan, name, arrays, stats, f)
        reads = [t for t in (plan.head_input, plan.feature_sq) if t is not None]
        if views > 1:  # the sum is taken right after each pass: n comes from it, not the graph
            passes, view_kernels = views_code(plan, prefix)
            code, reads = passes + code, [plan.head_input]
            kernels.update(view_kernels)
    known = f"result->ood_score >= {prefix.upper()}_OOD_THRESHOLD" if threshold is not None else 1
    code += f"    result->known = {known};\n"
    return OodProgram(name, threshold, views, constants, kernels, code, buffers, reads, stats_bytes)


def header_defines(program: OodProgram, ood: dict | None, prefix: str) -> str:
    """The header's `<PREFIX>_OOD_*` macros with a comment on where the threshold comes from."""
    ood, upper = ood or {}, prefix.upper()
    kind = "the head's integer features" if program.score in FEATURE_SCORES else "the logits"
    if program.score == "vim":
        kind = "the logits and the head's integer features"
    described = [f"   {program.score} of {kind}, higher = more like a known class. */"]
    if program.views > 1:
        described = [
            f"   {program.score} of {kind} summed over {program.views} dihedral views of the",
            "   input, higher = more like a known class. */",
        ]
    lines = [
        '/* Unknown-type detector (model.json "ood", lowbit/core/scores.py): ood_score is',
        *described,
        f'#define {upper}_OOD_SCORE "{program.score}"',
        "/* Passes of the integer body per image, on views 0 .. OOD_VIEWS - 1 of the input",
        "   codes (view v: bit 0 flips left-right, bit 1 up-down, bit 2 transposes;",
        "   lowbit/core/views.py). A feature score reads the head's input features summed over",
        "   them; class_dots, feature_sq, logits and argmax are view 0's, the image itself. */",
        f"#define {upper}_OOD_VIEWS {program.views}",
    ]
    if program.threshold is None:
        lines += [
            '/* model.json has no threshold ("threshold": null): ood_score is computed, '
            "known is 1. */",
            f"#define {upper}_OOD_HAS_THRESHOLD 0",
        ]
    else:
        source = (
            f"calibrated at TPR {ood.get('tpr')} on {ood.get('calibration_images')} "
            f"{ood.get('calibrated_on')} images"
        )
        lines += [
            f"#define {upper}_OOD_HAS_THRESHOLD 1",
            f"/* known = ood_score >= {float(program.threshold)!r}: {source} */",
            f"#define {upper}_OOD_THRESHOLD ({c_number(program.threshold, np.float64)})",
        ]
    return "\n".join(lines)


# --- tolerance of the C score against lowbit's numpy score ------------------------------------
# Higham, "Accuracy and Stability of Numerical Algorithms" (2002), eq. 3.5: a float64 dot product
# of length m, summed in any order (BLAS blocking and FMA included), is within gamma_m sum|x_i y_i|
# of the exact value, gamma_m = m u / (1 - m u), u = 2^-53. The score's inputs are bit-identical
# (module docstring), so C and numpy each lie within such a bound of the same exact value:
# - feature scores: a projection p_r = z . W_r (length F) is off by gamma_F A_r, A_r = |z|.|W_r|;
#   d_r = p_r - m_r adds one rounding, the squared distance D = sum_r d_r^2 (R <= F terms) gamma_R
#   D. To first order D is off by at most gamma_{F+2} (D + 2 sum_r |d_r| A_r): its "terms". A
#   prototype cosine is one dot product: terms sum_i |z_i p_i|. min/max are 1-Lipschitz and the
#   final subtraction MD_c - MD_0 rounds once (the |score| term).
# - residual = -norm(p), p_r = o . c_r with o = z - mu (one rounding, the same in both): p_r is
#   off by gamma_F A_r, A_r = |o|.|c_r|. A norm is 1-Lipschitz, |norm(p^) - norm(p)| <=
#   norm(p^ - p) <= gamma_F norm(A), and the R <= F squares, their sum and the correctly rounded
#   sqrt add gamma_{R+1} norm(p^): terms norm(A) beside the |score| term. This holds at a zero
#   residual too, where both executors give at most gamma_F norm(A). Propagating the sum of
#   squares s through sqrt instead (|sqrt(s + e) - sqrt(s)| <= e / (2 sqrt(s)) for s > 0,
#   sqrt(e) at s = 0) reaches the same size by Cauchy-Schwarz, but its first form is first
#   order only (false for s ~ e) and its second needs e's second-order terms gamma_F^2 A_r^2.
# - vim = energy - alpha r, r = |z - P z|: the energy's terms plus |alpha| (r + norm(A)), the
#   residual's bound with its |score| term r (which also covers rounding alpha r); the final
#   subtraction rounds once (the |score| term).
# - logit scores: max is exact; exp and log are within a few ulps in glibc, musl and numpy and
#   the K exponentials are positive and sum to s in [1, K]: a few u (K + |top| + |lse|), far
#   below the terms sum_c |logit_c| + K.
# Two executors differ by twice one bound: 2 gamma_{F+2} = 9.1e-13 for F = 4096 features, so
# SCORE_RTOL = 1e-12 holds with a margin (and first-order terms in u^2 vanish next to the 1);
# beyond 4096 features the factor grows with F, as gamma_F does.
SCORE_RTOL = 1e-12
MAX_FEATURES = 4096


def _distance_terms(z: np.ndarray, white: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Returns [N, C] D + 2 sum_r |d_r| A_r of each squared distance to `centers` [C, R]."""
    spread = np.abs(z) @ np.abs(white).T  # A_r
    d = (z @ white.T)[:, None, :] - centers[None, :, :]
    return (d * d).sum(axis=2) + 2 * (np.abs(d) * spread[:, None, :]).sum(axis=2)


def score_terms(
    name: str, logits: np.ndarray, features: np.ndarray | None = None, stats: dict | None = None
) -> np.ndarray:
    """Returns per sample the sum of absolute terms that scales the score's rounding error."""
    if name in LOGIT_SCORES:
        logits = np.asarray(logits, dtype=np.float64)
        return np.abs(logits).sum(axis=1) + logits.shape[1]
    z = normalize_rows(features)
    if name == "prototype":
        return (np.abs(z) @ np.abs(stats["prototypes"]).T).max(axis=1)
    if name in ("residual", "vim"):
        offset = z - stats["global_mean"]
        complement = stats["principal_complement"]
        spread = np.linalg.norm(np.abs(offset) @ np.abs(complement).T, axis=1)  # |A|
        if name == "residual":
            return spread
        alpha = abs(float(stats["vim_alpha"]))
        return score_terms("energy", logits) + alpha * (residual_norm(features, stats) + spread)
    terms = _distance_terms(z, stats["class_whitening"], stats["class_means_white"]).max(axis=1)
    if name == "rel_mahalanobis":
        center = stats["background_mean_white"][None, :]
        terms = terms + _distance_terms(z, stats["background_whitening"], center)[:, 0]
    return terms


def score_tolerance(
    name: str,
    scores: np.ndarray,
    logits: np.ndarray,
    features: np.ndarray | None = None,
    stats: dict | None = None,
) -> np.ndarray:
    """Returns per sample the largest |C score - numpy score| the C target may show."""
    width = 0 if features is None else np.shape(features)[1]
    relative = SCORE_RTOL * max(1.0, width / MAX_FEATURES)
    terms = score_terms(name, logits, features, stats)
    return relative * (1.0 + np.abs(scores) + terms)


def compare_scores(
    c_scores: np.ndarray,
    c_known: np.ndarray,
    scores: np.ndarray,
    known: np.ndarray,
    tolerance: np.ndarray,
    threshold: float | None,
) -> dict:
    """Returns counts comparing the C target's scores and decisions with lowbit's numpy ones.

    A known/unknown decision that differs is explained when numpy's score lies within
    `tolerance` of the threshold (the two scores may then fall on either side of it); any other
    difference, and any score outside the tolerance, is a bug.
    """
    difference = np.abs(np.asarray(c_scores, np.float64) - np.asarray(scores, np.float64))
    differ = np.asarray(c_known, bool) != np.asarray(known, bool)
    near = np.zeros(len(differ), bool)
    if threshold is not None:
        near = np.abs(np.asarray(scores, np.float64) - threshold) <= tolerance
    return {
        "checked": int(len(differ)),
        "max_abs_diff": float(difference.max(initial=0.0)),
        "out_of_tolerance": int(np.sum(difference > tolerance)),
        "decisions_differ": int(differ.sum()),
        "explained": int(np.sum(differ & near)),
        "unexplained": int(np.sum(differ & ~near)),
    }
