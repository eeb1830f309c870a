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


class XentLoss:
    """Cross-entropy against soft labels."""

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, step_frac: float) -> torch.Tensor:
        return F.cross_entropy(logits.float(), two_class(target.float()))


class AuxConfLoss:
    """The paper's auxiliary confidence loss.

    target = (1 - a) * weak labels + a * the student's hardened predictions, where
    ``a = aux_coef * min(1, step_frac / warmup_frac)`` ramps up linearly (the reference
    jumped from ``step_frac`` to 1). The hardening threshold makes the student's positive
    rate match the weak labels'; it is taken over the last ``window`` examples (at least one
    full batch), so micro-batches under gradient accumulation share one threshold rather
    than each taking a noisy quantile of its own few examples.
    """

    def __init__(self, aux_coef: float = 0.5, warmup_frac: float = 0.2, window: int = 32):
        self.aux_coef = aux_coef
        self.warmup_frac = warmup_frac
        self.window = window
        self._recent_p1 = torch.empty(0)
        self._recent_target = torch.empty(0)

    def coef(self, step_frac: float) -> float:
        ramp = 1.0 if self.warmup_frac <= 0 else min(1.0, step_frac / self.warmup_frac)
        return self.aux_coef * ramp

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, step_frac: float) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        p1 = logits.softmax(dim=-1)[:, 1].detach()
        self._recent_p1 = torch.cat([self._recent_p1.to(p1.device), p1])[-self.window:]
        self._recent_target = torch.cat([self._recent_target.to(p1.device), target])[-self.window:]
        positive_rate = self._recent_target.mean()
        threshold = torch.quantile(self._recent_p1, 1 - positive_rate)
        hardened = (p1 > threshold).float()
        alpha = self.coef(step_frac)
        return F.cross_entropy(logits, two_class((1 - alpha) * target + alpha * hardened))


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
