"""Scores of a stage's test predictions, student-supervisor agreement, and the performance
gap recovered (PGR)."""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import binary_accuracy, binary_auroc, multiclass_calibration_error


def evaluate(p1: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, AUROC and expected calibration error of soft predictions P(label=1)
    against 0/1 labels. ECE is the usual top-label one (15 bins of the confidence in the
    predicted class), not the reliability of P(label=1) alone."""
    labels = labels.long()
    return {
        "acc": binary_accuracy(p1, labels).item(),
        "auroc": binary_auroc(p1, labels).item() if 0 < labels.sum() < len(labels) else float("nan"),
        "ece": multiclass_calibration_error(torch.stack([1 - p1, p1], dim=1), labels, num_classes=2, n_bins=15).item(),
    }


def agreement(student_p1: torch.Tensor, supervisor_p1: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """How often the student's hard predictions match its supervisor's: overall, and on the
    examples the supervisor got wrong (where imitation costs accuracy; the paper's measure)."""
    student, supervisor = student_p1 > 0.5, supervisor_p1 > 0.5
    same = (student == supervisor).float()
    wrong = supervisor != labels.bool()
    return {
        "agreement": same.mean().item(),
        "agreement_where_supervisor_wrong": same[wrong].mean().item() if wrong.any() else float("nan"),
    }


def pgr(weak: float, transfer: float, ceiling: float) -> float:
    """(transfer - weak) / (ceiling - weak); NaN when the ceiling does not beat the weak model."""
    gap = ceiling - weak
    if not all(math.isfinite(x) for x in (weak, transfer, ceiling)) or gap <= 0:
        return float("nan")
    return (transfer - weak) / gap
