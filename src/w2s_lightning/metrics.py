"""Scores of a stage's test predictions, and the performance gap recovered (PGR)."""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import binary_accuracy, binary_auroc


def evaluate(p1: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and AUROC of soft predictions P(label=1) against 0/1 labels."""
    labels = labels.long()
    return {
        "acc": binary_accuracy(p1, labels).item(),
        "auroc": binary_auroc(p1, labels).item() if 0 < labels.sum() < len(labels) else float("nan"),
    }


def pgr(weak: float, transfer: float, ceiling: float) -> float:
    """(transfer - weak) / (ceiling - weak); NaN when the ceiling does not beat the weak model."""
    gap = ceiling - weak
    if not all(math.isfinite(x) for x in (weak, transfer, ceiling)) or gap <= 0:
        return float("nan")
    return (transfer - weak) / gap
