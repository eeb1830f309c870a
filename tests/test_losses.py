import math

import pytest
import torch

from w2s_lightning.losses import AuxConfLoss, ProductLoss, XentLoss


def logits_for(p1: list[float]) -> torch.Tensor:
    """Two-class logits whose softmax gives exactly these P(class 1)."""
    p = torch.tensor(p1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def bce(p1: list[float], targets: list[float]) -> float:
    return sum(-(t * math.log(p) + (1 - t) * math.log(1 - p)) for p, t in zip(p1, targets)) / len(p1)


P1 = [0.9, 0.2, 0.6, 0.4]


def test_xent_against_soft_labels_by_hand():
    weak = [0.8, 0.1, 0.5, 0.3]
    loss = XentLoss()(logits_for(P1), torch.tensor(weak), step_frac=0.5)
    assert loss.item() == pytest.approx(bce(P1, weak), rel=1e-5)


def test_aux_conf_by_hand():
    # Weak positive rate 0.5 -> threshold = median of student P1 = 0.5 -> hardened [1, 0, 1, 0].
    # step_frac 0.1 of a 0.2 warm-up -> alpha = 0.5 * 0.5 = 0.25.
    weak = [1.0, 0.0, 0.0, 1.0]
    loss = AuxConfLoss(aux_coef=0.5, warmup_frac=0.2, window=4)(logits_for(P1), torch.tensor(weak), 0.1)
    target = [0.75 * w + 0.25 * h for w, h in zip(weak, [1, 0, 1, 0])]
    assert target == [1.0, 0.0, 0.25, 0.75]
    assert loss.item() == pytest.approx(bce(P1, target), rel=1e-5)


def test_aux_conf_threshold_matches_weak_positive_rate():
    # 1 of 4 weak labels positive -> only the student's most confident example is hardened to 1.
    weak = [0.0, 0.0, 1.0, 0.0]
    loss = AuxConfLoss(aux_coef=1.0, warmup_frac=0.0, window=4)(logits_for(P1), torch.tensor(weak), 0.5)
    assert loss.item() == pytest.approx(bce(P1, [1, 0, 0, 0]), rel=1e-5)


def test_aux_conf_ramps_linearly_not_in_a_jump():
    loss = AuxConfLoss(aux_coef=0.5, warmup_frac=0.2)
    assert [loss.coef(f) for f in (0.0, 0.05, 0.1, 0.2, 0.9)] == pytest.approx([0, 0.125, 0.25, 0.5, 0.5])


def test_aux_conf_under_gradient_accumulation_matches_the_full_batch():
    # Full batch: P1 [0.9, 0.8, 0.3, 0.2], weak positive rate 0.5 -> threshold 0.55 -> [1, 1, 0, 0].
    p1, weak = [0.9, 0.8, 0.3, 0.2], torch.tensor([1.0, 0.0, 1.0, 0.0])
    accumulated = AuxConfLoss(aux_coef=1.0, warmup_frac=0.0, window=4)
    accumulated(logits_for(p1)[:2], weak[:2], 0.5)
    second = accumulated(logits_for(p1)[2:], weak[2:], 0.5)
    assert second.item() == pytest.approx(bce(p1[2:], [0, 0]), rel=1e-5)
    # The reference's per-batch quantile over the second micro-batch alone hardens it to [1, 0].
    alone = AuxConfLoss(aux_coef=1.0, warmup_frac=0.0, window=4)(logits_for(p1)[2:], weak[2:], 0.5)
    assert alone.item() == pytest.approx(bce(p1[2:], [1, 0]), rel=1e-5)


def test_product_loss_by_hand():
    weak = [0.8, 0.1, 0.5, 0.3]
    target = [(p * w) / (p * w + (1 - p) * (1 - w)) for p, w in zip(P1, weak)]
    loss = ProductLoss(alpha=1.0, beta=1.0)(logits_for(P1), torch.tensor(weak), 0.0)
    assert loss.item() == pytest.approx(bce(P1, target), rel=1e-5)
