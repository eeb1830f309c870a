import math

import pytest
import torch

from w2s_lightning.losses import AdaptiveConfLoss, AuxConfLoss, ProductLoss, XentLoss


def logits_for(p1: list[float]) -> torch.Tensor:
    """Two-class logits whose softmax gives exactly these P(class 1)."""
    p = torch.tensor(p1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def bce(p1: list[float], targets: list[float]) -> float:
    return sum(-(t * math.log(p) + (1 - t) * math.log(1 - p)) for p, t in zip(p1, targets, strict=True)) / len(p1)


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
    target = [0.75 * w + 0.25 * h for w, h in zip(weak, [1, 0, 1, 0], strict=True)]
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
    target = [(p * w) / (p * w + (1 - p) * (1 - w)) for p, w in zip(P1, weak, strict=True)]
    loss = ProductLoss(alpha=1.0, beta=1.0)(logits_for(P1), torch.tensor(weak), 0.0)
    assert loss.item() == pytest.approx(bce(P1, target), rel=1e-5)


def test_aux_conf_soft_mixes_in_the_students_own_probabilities():
    weak = [1.0, 0.0, 0.0, 1.0]
    loss = AuxConfLoss(aux_coef=0.5, warmup_frac=0.2, window=4, hard=False)(logits_for(P1), torch.tensor(weak), 0.1)
    target = [0.75 * w + 0.25 * p for w, p in zip(weak, P1, strict=True)]  # alpha 0.25, student P1 unhardened
    assert loss.item() == pytest.approx(bce(P1, target), rel=1e-5)


def test_adaptive_conf_by_hand():
    weak = [0.8, 0.7, 0.1, 0.4]  # hard weak labels [1, 1, 0, 0]; student argmax [1, 0, 1, 0]
    loss = AdaptiveConfLoss(temperature=2.0, warmup_frac=0.5)(logits_for(P1), torch.tensor(weak), 0.25)
    expected = 0.0
    for p, w in zip(P1, weak, strict=True):
        own = 1 if p > 0.5 else 0
        ce_self = -math.log(p if own else 1 - p)
        ce_weak = -math.log(p if w > 0.5 else 1 - p)
        beta = math.exp(ce_self / 2) / (math.exp(ce_self / 2) + math.exp(ce_weak / 2)) * 0.5  # half-way up the ramp
        expected += (1 - beta) * bce([p], [w]) + beta * ce_self
    assert loss.item() == pytest.approx(expected / 4, rel=1e-5)


def test_adaptive_conf_weighs_agreement_at_one_half_and_trusts_the_weak_label_against_a_confident_student():
    loss = AdaptiveConfLoss(temperature=1.0, warmup_frac=0.0)
    agree = loss(logits_for([0.9]), torch.tensor([1.0]), 1.0)
    assert agree.item() == pytest.approx(0.5 * bce([0.9], [1.0]) + 0.5 * -math.log(0.9), rel=1e-5)
    # Student 0.99 against a weak 0: beta = sigmoid(ln(0.99/0.01)... ) is tiny, so the weak label dominates.
    disagree = loss(logits_for([0.99]), torch.tensor([0.0]), 1.0)
    assert disagree.item() == pytest.approx(bce([0.99], [0.0]), rel=0.02)
