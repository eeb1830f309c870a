"""Training losses. Each takes (logits [N, 2], target P(label=1) [N], step_frac) -> scalar.

The target is the ground truth (0/1) for the weak model and the ceiling, and the weak
model's soft labels for the transfer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    its positive rate match the weak labels'; the threshold is taken over the last
    ``window`` examples (at least one full batch), so micro-batches under gradient
    accumulation share one threshold rather than each taking a noisy quantile of its own
    few examples. ``hard=False`` uses the student's soft probabilities instead (detached).
    """

    def __init__(self, aux_coef: float = 0.5, warmup_frac: float = 0.2, window: int = 32, hard: bool = True):
        self.aux_coef = aux_coef
        self.warmup_frac = warmup_frac
        self.window = window
        self.hard = hard
        self._recent_p1 = torch.empty(0)
        self._recent_target = torch.empty(0)

    def coef(self, step_frac: float) -> float:
        return self.aux_coef * ramp(step_frac, self.warmup_frac)

    def _harden(self, p1: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._recent_p1 = torch.cat([self._recent_p1.to(p1.device), p1])[-self.window :]
        self._recent_target = torch.cat([self._recent_target.to(p1.device), target])[-self.window :]
        positive_rate = self._recent_target.mean()
        threshold = torch.quantile(self._recent_p1, 1 - positive_rate)
        return (p1 > threshold).float()

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, step_frac: float) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        p1 = logits.softmax(dim=-1)[:, 1].detach()
        own = self._harden(p1, target) if self.hard else p1
        alpha = self.coef(step_frac)
        return F.cross_entropy(logits, two_class((1 - alpha) * target + alpha * own))


class AdaptiveConfLoss:
    """The adaptive confidence loss of Guo et al. (2024), "Vision Superalignment".

    Per example, the weight on the student's own hard prediction is
    ``b = exp(CE_self / T) / (exp(CE_self / T) + exp(CE_weak / T))``, where CE_self is the
    student's cross-entropy against its own argmax and CE_weak against the weak label's
    argmax (as in the authors' code; ``b`` is 1/2 where they agree and falls as the student
    grows confident against the weak label). ``b`` ramps in linearly over ``warmup_frac``.
    loss = mean((1 - b) * CE(student, weak soft label) + b * CE(student, own hard label)).
    """

    def __init__(self, temperature: float = 1.0, warmup_frac: float = 0.25):
        self.temperature = temperature
        self.warmup_frac = warmup_frac

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, step_frac: float) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        own = logits.argmax(dim=-1)
        weak_hard = (target > 0.5).long()
        ce_self = F.cross_entropy(logits, own, reduction="none")
        ce_weak = F.cross_entropy(logits, weak_hard, reduction="none")
        # exp(a)/(exp(a)+exp(b)) = sigmoid(a - b): the same weight without overflow.
        beta = torch.sigmoid((ce_self - ce_weak) / self.temperature).detach() * ramp(step_frac, self.warmup_frac)
        soft = F.cross_entropy(logits, two_class(target), reduction="none")
        return ((1 - beta) * soft + beta * ce_self).mean()


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
