import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.core.scores import auroc, energy, fpr_at_95_tpr, max_logit, msp
from lowbit.train.metrics import accuracy, confusion_matrix, ood_metrics, per_class_accuracy


def test_accuracy_per_class_and_confusion():
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    assert accuracy(y, pred) == 3 / 5
    assert per_class_accuracy(y, pred, ["a", "b", "c", "d"]) == {
        "a": 0.5,
        "b": 1.0,
        "c": 0.0,
        "d": None,
    }
    expected = [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert np.array_equal(confusion_matrix(y, pred, 3), expected)


def test_scores_match_torch():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [100.0, -100.0, 50.0]], dtype=np.float32)
    torch_logits = torch.from_numpy(logits).double()
    np.testing.assert_allclose(msp(logits), torch.softmax(torch_logits, 1).max(1).values.numpy())
    np.testing.assert_allclose(energy(logits), torch.logsumexp(torch_logits, 1).numpy())
    assert np.array_equal(max_logit(logits), [3.0, 0.0, 100.0])


def test_auroc_hand_cases():
    assert auroc([3, 2, 1], [0]) == 1.0
    assert auroc([0], [3, 2, 1]) == 0.0
    assert auroc([1], [1]) == 0.5
    # pairs (in > out) + ties / 2: out=2 -> 2 + 0.5, out=3 -> 1 + 0.5, out=5 -> 0; over 12 pairs
    assert auroc([1, 2, 3, 4], [2, 3, 5]) == 4 / 12


def test_fpr95_hand_cases():
    scores_in = np.arange(1, 21)  # keep ceil(0.95 * 20) = 19 -> threshold 2
    assert fpr_at_95_tpr(scores_in, [0, 1, 2, 3]) == 0.5
    # all in-distribution scores tie: the threshold keeps them all; OOD ties count as positives
    assert fpr_at_95_tpr(np.full(20, 5.0), [5.0, 4.0]) == 0.5
    # ties straddling the 95% point: threshold 1 keeps all 10 (100% >= 95%)
    assert fpr_at_95_tpr([1, 1, 2, 2, 2, 2, 2, 2, 2, 2], [1, 0.5]) == 0.5
    assert fpr_at_95_tpr([1, 2, 3], [0, 1.5], tpr=1.0) == 0.5
    with pytest.raises(ValueError):
        fpr_at_95_tpr([1.0], [])


def _brute_auroc(scores_in, scores_out) -> float:
    pairs = [(a > b) + 0.5 * (a == b) for a in scores_in for b in scores_out]
    return sum(pairs) / len(pairs)


def _brute_fpr(scores_in, scores_out, tpr) -> float:
    scores_in, scores_out = np.asarray(scores_in), np.asarray(scores_out)
    candidates = np.unique(np.concatenate([scores_in, scores_out]))
    feasible = [t for t in candidates if np.mean(scores_in >= t) >= tpr]
    return float(np.mean(scores_out >= max(feasible)))


small_scores = st.lists(st.integers(-4, 4).map(float), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(small_scores, small_scores, st.sampled_from([0.5, 0.9, 0.95, 1.0]))
def test_auroc_and_fpr_equal_their_definitions(scores_in, scores_out, tpr):
    # small integer scores: many ties
    assert auroc(scores_in, scores_out) == _brute_auroc(scores_in, scores_out)
    assert fpr_at_95_tpr(scores_in, scores_out, tpr) == _brute_fpr(scores_in, scores_out, tpr)


def test_ood_metrics_keys_and_separation():
    logits_in = np.array([[5.0, 0.0], [0.0, 6.0], [7.0, 1.0]])
    logits_out = np.array([[0.1, 0.0], [0.0, 0.2]])
    result = ood_metrics(logits_in, logits_out)
    assert set(result) == {"msp", "max_logit", "energy"}
    for scores in result.values():
        assert set(scores) == {"auroc", "fpr95"}
        assert scores["auroc"] == 1.0 and scores["fpr95"] == 0.0
