"""Scores of a stage's test predictions, student-supervisor agreement, and the performance
gap recovered (PGR)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def evaluate(p1: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, AUROC, expected calibration error and mean margin of soft predictions
    P(label=1) against 0/1 labels. ECE is the usual top-label one (15 bins of the confidence
    in the predicted class), not the reliability of P(label=1) alone. The margin, the mean
    |p - 0.5|, says how far from a coin flip the predictions sit: near 0, a stage barely
    moved from its zero-initialised head, whatever its accuracy."""
    # Imported here: torch and torchmetrics take 5 s to import, and the report reads only pgr and gap_noise.
    import torch
    from torchmetrics.functional.classification import binary_accuracy, binary_auroc, multiclass_calibration_error

    labels = labels.long()
    return {
        "acc": binary_accuracy(p1, labels).item(),
        "auroc": binary_auroc(p1, labels).item() if 0 < labels.sum() < len(labels) else float("nan"),
        "ece": multiclass_calibration_error(torch.stack([1 - p1, p1], dim=1), labels, num_classes=2, n_bins=15).item(),
        "margin": (p1 - 0.5).abs().mean().item(),
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


def gap_noise(weak: float, ceiling: float, n_test: int) -> float:
    """Two standard errors of the difference of two accuracies measured on ``n_test`` examples
    each (treated as independent, which overstates the noise a little for a shared test set).
    A ceiling - weak gap within it cannot be told from zero, and PGR divides by it."""
    return 2 * math.sqrt((weak * (1 - weak) + ceiling * (1 - ceiling)) / n_test) if n_test else math.inf


def pgr_status(weak: float, ceiling: float, n_test: int) -> str:
    """Whether PGR over this pair means something: ``ok``, ``ceiling <= weak`` (undefined) or
    ``gap within noise`` (defined, but it divides by a gap the test set cannot resolve)."""
    if not ceiling > weak:
        return "ceiling <= weak"
    return "gap within noise" if ceiling - weak <= gap_noise(weak, ceiling, n_test) else "ok"


def pgr(weak: float, transfer: float, ceiling: float) -> float:
    """(transfer - weak) / (ceiling - weak); NaN when the ceiling does not beat the weak model."""
    gap = ceiling - weak
    if not all(math.isfinite(x) for x in (weak, transfer, ceiling)) or gap <= 0:
        return float("nan")
    return (transfer - weak) / gap
