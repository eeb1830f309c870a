import math

import pytest
import torch

from w2s_lightning.metrics import evaluate, pgr


def test_pgr_regular_and_out_of_range():
    assert pgr(0.6, 0.7, 0.8) == pytest.approx(0.5)
    assert pgr(0.6, 0.9, 0.8) == pytest.approx(1.5)   # transfer beats the ceiling
    assert pgr(0.6, 0.5, 0.8) == pytest.approx(-0.5)  # transfer falls below the weak model


@pytest.mark.parametrize("weak,transfer,ceiling", [(0.7, 0.75, 0.7), (0.8, 0.7, 0.6), (0.6, float("nan"), 0.8)])
def test_pgr_undefined_is_nan(weak, transfer, ceiling):
    assert math.isnan(pgr(weak, transfer, ceiling))


def test_evaluate_accuracy_and_auroc():
    scores = evaluate(torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([1, 0, 0, 1]))
    assert scores["acc"] == pytest.approx(0.5)
    assert scores["auroc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered right
    assert math.isnan(evaluate(torch.tensor([0.9, 0.2]), torch.tensor([1, 1]))["auroc"])
