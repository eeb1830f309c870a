import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import w2s_lightning.config  # noqa: F401  (registers the schemas conf/ uses)
from w2s_lightning.errors import ConfigError
from w2s_lightning.losses import AdaptiveConfLoss, AuxConfLoss, ConfidenceWindowLoss, ProductLoss, XentLoss

ROOT = Path(__file__).resolve().parents[1]


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
    loss = AuxConfLoss(aux_coef=0.5, warmup_frac=0.2)(logits_for(P1), torch.tensor(weak), 0.1)
    target = [0.75 * w + 0.25 * h for w, h in zip(weak, [1, 0, 1, 0], strict=True)]
    assert target == [1.0, 0.0, 0.25, 0.75]
    assert loss.item() == pytest.approx(bce(P1, target), rel=1e-5)


def test_aux_conf_threshold_matches_weak_positive_rate():
    # 1 of 4 weak labels positive -> only the student's most confident example is hardened to 1.
    weak = [0.0, 0.0, 1.0, 0.0]
    loss = AuxConfLoss(aux_coef=1.0, warmup_frac=0.0)(logits_for(P1), torch.tensor(weak), 0.5)
    assert loss.item() == pytest.approx(bce(P1, [1, 0, 0, 0]), rel=1e-5)


def test_aux_conf_ramps_linearly_not_in_a_jump():
    loss = AuxConfLoss(aux_coef=0.5, warmup_frac=0.2)
    assert [loss.coef(f) for f in (0.0, 0.05, 0.1, 0.2, 0.9)] == pytest.approx([0, 0.125, 0.25, 0.5, 0.5])


def test_aux_conf_under_gradient_accumulation_takes_the_threshold_of_the_whole_step():
    # Full batch: P1 [0.9, 0.8, 0.3, 0.2], weak positive rate 0.5 -> threshold 0.55 -> [1, 1, 0, 0].
    p1, weak = [0.9, 0.8, 0.3, 0.2], torch.tensor([1.0, 0.0, 1.0, 0.0])
    accumulated = AuxConfLoss(aux_coef=1.0, warmup_frac=0.0)
    accumulated.begin_step(torch.tensor(p1), weak)  # the step's rows, before its first micro-batch
    first, second = (accumulated(logits_for(p1)[half], weak[half], 0.5) for half in (slice(0, 2), slice(2, 4)))
    assert [first.item(), second.item()] == pytest.approx([bce(p1[:2], [1, 1]), bce(p1[2:], [0, 0])], rel=1e-5)
    # A quantile over the second micro-batch alone would harden it to [1, 0].
    alone = AuxConfLoss(aux_coef=1.0, warmup_frac=0.0)(logits_for(p1)[2:], weak[2:], 0.5)
    assert alone.item() == pytest.approx(bce(p1[2:], [1, 0]), rel=1e-5)
    accumulated.begin_step(None, None)  # a step of one micro-batch: the call's own batch again
    assert accumulated(logits_for(p1)[2:], weak[2:], 0.5).item() == pytest.approx(alone.item())


def test_product_loss_by_hand():
    weak = [0.8, 0.1, 0.5, 0.3]
    target = [(p * w) / (p * w + (1 - p) * (1 - w)) for p, w in zip(P1, weak, strict=True)]
    loss = ProductLoss(alpha=1.0, beta=1.0)(logits_for(P1), torch.tensor(weak), 0.0)
    assert loss.item() == pytest.approx(bce(P1, target), rel=1e-5)


def test_aux_conf_soft_mixes_in_the_students_own_probabilities():
    weak = [1.0, 0.0, 0.0, 1.0]
    loss = AuxConfLoss(aux_coef=0.5, warmup_frac=0.2, hard=False)(logits_for(P1), torch.tensor(weak), 0.1)
    target = [0.75 * w + 0.25 * p for w, p in zip(weak, P1, strict=True)]  # alpha 0.25, student P1 unhardened
    assert loss.item() == pytest.approx(bce(P1, target), rel=1e-5)


def test_adaptive_conf_by_hand_as_the_authors_distiller():
    # Their formulas (AdaptConf): beta from exp(CE/T); KD = KL(weak || student) at kd_temperature,
    # times its square; no warm-up, so step_frac changes nothing.
    weak = [0.8, 0.7, 0.1, 0.4]  # hard weak labels [1, 1, 0, 0]; student argmax [1, 0, 1, 0]
    loss = AdaptiveConfLoss(temperature=2.0, kd_temperature=2.0)
    expected = 0.0
    for p, w in zip(P1, weak, strict=True):
        own = 1 if p > 0.5 else 0
        ce_self = -math.log(p if own else 1 - p)
        ce_weak = -math.log(p if w > 0.5 else 1 - p)
        beta = math.exp(ce_self / 2) / (math.exp(ce_self / 2) + math.exp(ce_weak / 2))
        # softmax of logits / 2: P(1) = sqrt(p) / (sqrt(p) + sqrt(1 - p)), for student and weak alike
        q, t = (math.sqrt(x) / (math.sqrt(x) + math.sqrt(1 - x)) for x in (p, w))
        kd = 4 * (t * math.log(t / q) + (1 - t) * math.log((1 - t) / (1 - q)))
        expected += (1 - beta) * kd + beta * ce_self
    for step_frac in (0.0, 0.5):
        assert loss(logits_for(P1), torch.tensor(weak), step_frac).item() == pytest.approx(expected / 4, rel=1e-5)


def test_adaptive_conf_weighs_agreement_at_one_half_and_trusts_the_weak_label_against_a_confident_student():
    loss = AdaptiveConfLoss(temperature=1.0)
    agree = loss(logits_for([0.9]), torch.tensor([1.0]), 1.0)  # KL against a hard 1 is the cross-entropy
    assert agree.item() == pytest.approx(0.5 * bce([0.9], [1.0]) + 0.5 * -math.log(0.9), rel=1e-5)
    # Student 0.99 against a weak 0: beta = sigmoid(ln(0.99/0.01)... ) is tiny, so the weak label dominates.
    disagree = loss(logits_for([0.99]), torch.tensor([0.0]), 1.0)
    assert disagree.item() == pytest.approx(bce([0.99], [0.0]), rel=0.02)


def test_confidence_window_counts_only_the_uncertain_examples():
    # radius 0.15: P1 0.9 and 0.2 are confident (top probability >= 0.65), 0.6 and 0.4 are not.
    weak = [0.8, 0.1, 0.5, 0.3]
    loss = ConfidenceWindowLoss(radius=0.15)(logits_for(P1), torch.tensor(weak), 0.5)
    assert loss.item() == pytest.approx((bce([0.6], [0.5]) + bce([0.4], [0.3])) / 4, rel=1e-5)


def test_confidence_window_of_radius_one_half_is_xent():
    weak = torch.tensor([0.8, 0.1, 0.5, 0.3])
    window = ConfidenceWindowLoss(radius=0.5)(logits_for(P1), weak, 0.5)
    assert window.item() == pytest.approx(XentLoss()(logits_for(P1), weak, 0.5).item(), rel=1e-6)


def test_confidence_window_midweak_is_the_median_confidence_of_the_labels():
    loss = ConfidenceWindowLoss(radius="midweak")
    loss.fit_to_labels(torch.tensor([0.9, 0.6, 0.3, 0.45, 0.5]))  # confidences 0.4, 0.1, 0.2, 0.05, 0
    assert loss.radius == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="radius"):
        ConfidenceWindowLoss(radius=0.7)


@pytest.mark.parametrize(("alias", "same_as"), [("kl", "xent"), ("log_entropy", "aux_conf_soft")])
def test_the_eleuther_loss_names_point_at_the_existing_losses(alias, same_as):
    """KL against soft labels has xent's gradient, log-entropy is aux_conf_soft: a name, not a twin."""
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        named, existing = (compose("config", [f"loss={name}"]).loss for name in (alias, same_as))
    assert named.name == alias and named.fn == existing.fn
