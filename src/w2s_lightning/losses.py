"""Training losses. Each takes (logits [N, 2], target P(label=1) [N], step_frac) -> scalar.

The target is the ground truth (0/1) for the weak model and the ceiling, and the weak
model's soft labels for the transfer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from w2s_lightning.errors import ConfigError


def two_class(p1: torch.Tensor) -> torch.Tensor:
    """[N] probabilities of class 1 -> [N, 2] distributions."""
    return torch.stack([1 - p1, p1], dim=-1)


def ramp(step_frac: float, warmup_frac: float) -> float:
    """0 -> 1 linearly over the first ``warmup_frac`` of training, then 1."""
    return 1.0 if warmup_frac <= 0 else min(1.0, step_frac / warmup_frac)


class XentLoss:
    """Cross-entropy against soft labels."""

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, step_frac: float) -> torch.Tensor:
        return F.cross_entropy(logits.float(), two_class(target.float()))


class AuxConfLoss:
    """The paper's auxiliary confidence loss.

    target = (1 - a) * weak labels + a * the student's own predictions, where
    ``a = aux_coef * min(1, step_frac / warmup_frac)`` ramps up linearly (the reference
    jumped from ``step_frac`` to 1).

    ``hard=True`` (the paper) hardens the student's predictions with a threshold that makes
    its positive rate match the weak labels'. As in the reference, the threshold is one
    quantile over the optimizer step's whole batch: ``begin_step`` gives it the student's
    predictions and the labels of every row of the step, on every rank, before the step's
    first micro-batch (module.W2SModule.begin_step); given none, the loss takes it over the
    batch it is called on. ``hard=False`` uses the student's soft probabilities (detached).
    """

    def __init__(self, aux_coef: float = 0.5, warmup_frac: float = 0.2, hard: bool = True):
        if not 0 <= aux_coef <= 1:
            raise ConfigError(
                f"loss.fn.aux_coef={aux_coef}: the weight of the student's own predictions in its target "
                "is a share, in [0, 1] (the paper: 0.5, or 0.75 for the largest students)."
            )
        if not 0 <= warmup_frac <= 1:
            raise ConfigError(f"loss.fn.warmup_frac={warmup_frac}: a share of training, in [0, 1].")
        self.aux_coef = aux_coef
        self.warmup_frac = warmup_frac
        self.hard = hard
        self.threshold: torch.Tensor | None = None

    @property
    def needs_step_predictions(self) -> bool:
        return self.hard

    def coef(self, step_frac: float) -> float:
        return self.aux_coef * ramp(step_frac, self.warmup_frac)

    @staticmethod
    def matching_threshold(p1: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The threshold above which as many predictions are positive as the labels are."""
        return torch.quantile(p1, 1 - target.mean())

    def begin_step(self, p1: torch.Tensor | None, target: torch.Tensor | None) -> None:
        self.threshold = None if p1 is None else self.matching_threshold(p1, target)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, step_frac: float) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        p1 = logits.softmax(dim=-1)[:, 1].detach()
        if self.hard:
            threshold = self.matching_threshold(p1, target) if self.threshold is None else self.threshold
            own = (p1 > threshold.to(p1.device)).float()
        else:
            own = p1
        alpha = self.coef(step_frac)
        return F.cross_entropy(logits, two_class((1 - alpha) * target + alpha * own))


class AdaptiveConfLoss:
    """The adaptive confidence loss of Guo et al. (2024), "Vision Superalignment", as their
    ``AdaptConf`` (github ggjy/vision_weak_to_strong, ``classification/distillers/adaptconf.py``).

    Per example, the weight on the student's own hard prediction is
    ``b = exp(CE_self / T) / (exp(CE_self / T) + exp(CE_weak / T))``, where CE_self is the
    student's cross-entropy against its own argmax and CE_weak against the weak label's argmax
    (``b`` is 1/2 where they agree and falls as the student grows confident against the weak
    label); ``T`` is their ``superalignment_threshold``. No warm-up, as in their distiller.
    loss = mean((1 - b) * KD + b * CE_self), KD = their ``kd_loss``: KL(weak || student) at
    ``kd_temperature``, times its square. The weak model's logits are log(weak soft label) up
    to a constant, which the softmax at any temperature ignores.
    """

    def __init__(self, temperature: float = 1.0, kd_temperature: float = 1.0):
        if temperature <= 0 or kd_temperature <= 0:
            raise ConfigError(
                f"loss.fn.temperature={temperature}, kd_temperature={kd_temperature}: temperatures must be positive."
            )
        self.temperature = temperature
        self.kd_temperature = kd_temperature

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, step_frac: float) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        own = logits.argmax(dim=-1)
        ce_self = F.cross_entropy(logits, own, reduction="none")
        ce_weak = F.cross_entropy(logits, (target > 0.5).long(), reduction="none")
        # exp(a)/(exp(a)+exp(b)) = sigmoid(a - b): the same weight without overflow.
        beta = torch.sigmoid((ce_self - ce_weak) / self.temperature).detach()
        t = self.kd_temperature
        weak = (two_class(target).clamp_min(1e-12).log() / t).softmax(dim=-1)
        kd = F.kl_div((logits / t).log_softmax(dim=-1), weak, reduction="none").sum(dim=-1) * t**2
        return ((1 - beta) * kd + beta * ce_self).mean()


class ConfidenceWindowLoss:
    """The confidence window of EleutherAI's w2s (``w2s/loss.py``, ``--loss window``):
    cross-entropy against the soft labels only on the examples where the student is uncertain,
    its top probability under ``0.5 + radius``; the sum is divided by all the examples.
    ``radius="midweak"``: the median confidence |p - 0.5| of the weak labels it trains on,
    set by ``fit_to_labels`` before training (their rule)."""

    def __init__(self, radius: float | str = 0.15):
        if radius != "midweak" and not 0 <= float(radius) <= 0.5:
            raise ConfigError(f"loss.fn.radius={radius!r}: give a number in [0, 0.5] or 'midweak'.")
        self.radius = radius

    def fit_to_labels(self, labels: torch.Tensor) -> None:
        if self.radius == "midweak":
            self.radius = (labels.float() - 0.5).abs().median().item()

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, step_frac: float) -> torch.Tensor:
        if isinstance(self.radius, str):
            raise ConfigError("radius='midweak' needs the training labels: call fit_to_labels first.")
        logits, target = logits.float(), target.float()
        uncertain = logits.softmax(dim=-1).max(dim=-1).values < 0.5 + self.radius
        xent = F.cross_entropy(logits[uncertain], two_class(target[uncertain]), reduction="sum")
        return xent / len(logits)


class ProductLoss:
    """The reference's product loss: target proportional to student^beta * weak^alpha."""

    def __init__(self, alpha: float = 1.0, beta: float = 1.0):
        self.alpha = alpha
        self.beta = beta

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, step_frac: float) -> torch.Tensor:
        logits = logits.float()
        product = logits.softmax(dim=-1).pow(self.beta) * two_class(target.float()).pow(self.alpha)
        product = (product / product.sum(dim=-1, keepdim=True)).detach()
        return F.cross_entropy(logits, product)
