import math

import torch
import torch.nn.functional as F

from lowbit.train.losses import LOSSES, cross_entropy, logitnorm_loss, make_loss


def _ce_by_hand(row: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[label]


def test_logitnorm_matches_hand_computation():
    logits = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    y = torch.tensor([1, 0])
    tau = 0.5
    # row norms 5 and 2: divide by tau * norm + 1e-7
    rows = [[3.0 / (2.5 + 1e-7), 4.0 / (2.5 + 1e-7)], [0.0, -2.0 / (1.0 + 1e-7)]]
    expected = (_ce_by_hand(rows[0], 1) + _ce_by_hand(rows[1], 0)) / 2
    # float32 softmax of values near 1: a few ulps of 1.0
    assert abs(logitnorm_loss(logits, y, tau).item() - expected) < 1e-6


def test_logitnorm_ignores_logit_scale():
    # the property that makes the cosine head's scale irrelevant under LogitNorm
    torch.manual_seed(0)
    logits, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(logitnorm_loss(logits, y, 0.1), logitnorm_loss(7.0 * logits, y, 0.1))


def test_cross_entropy_and_registry():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.equal(cross_entropy(logits, y), F.cross_entropy(logits, y))
    assert set(LOSSES) == {"ce", "logitnorm"}
    assert torch.equal(make_loss("ce", 0.3)(logits, y), cross_entropy(logits, y))
    assert torch.equal(make_loss("logitnorm", 0.3)(logits, y), logitnorm_loss(logits, y, 0.3))


def test_distillation_loss_matches_its_formula():
    from lowbit.train.losses import distillation_loss, with_distillation

    student = torch.tensor([[1.0, 2.0, 0.5]])
    teacher = torch.tensor([[2.0, 0.0, 1.0]])
    temperature = 2.0
    p = [math.exp(v / temperature) for v in teacher[0].tolist()]
    q = [math.exp(v / temperature) for v in student[0].tolist()]
    p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
    expected = temperature**2 * sum(a * math.log(a / b) for a, b in zip(p, q))
    assert abs(distillation_loss(student, teacher, temperature).item() - expected) < 1e-6
    assert distillation_loss(teacher, teacher, temperature).item() == 0.0
    y = torch.tensor([1])
    mixed = with_distillation(cross_entropy, 0.25, temperature)(student, y, teacher)
    by_hand = 0.75 * cross_entropy(student, y) + 0.25 * expected
    assert abs(mixed.item() - by_hand.item()) < 1e-6
