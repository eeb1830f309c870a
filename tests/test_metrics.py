import math

import pytest
import torch

from w2s_lightning.metrics import agreement, evaluate, gap_noise, pgr, pgr_status


def test_pgr_regular_and_out_of_range():
    assert pgr(0.6, 0.7, 0.8) == pytest.approx(0.5)
    assert pgr(0.6, 0.9, 0.8) == pytest.approx(1.5)  # transfer beats the ceiling
    assert pgr(0.6, 0.5, 0.8) == pytest.approx(-0.5)  # transfer falls below the weak model


@pytest.mark.parametrize("weak,transfer,ceiling", [(0.7, 0.75, 0.7), (0.8, 0.7, 0.6), (0.6, float("nan"), 0.8)])
def test_pgr_undefined_is_nan(weak, transfer, ceiling):
    assert math.isnan(pgr(weak, transfer, ceiling))


def test_evaluate_accuracy_and_auroc():
    scores = evaluate(torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([1, 0, 0, 1]))
    assert scores["acc"] == pytest.approx(0.5)
    assert scores["auroc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered right
    assert math.isnan(evaluate(torch.tensor([0.9, 0.2]), torch.tensor([1, 1]))["auroc"])


def test_ece_by_hand():
    # Bins of width 1/15: confidences 0.9 (label 1, right), 0.8 (predicts 0 with confidence 0.8, right),
    # 0.6 (wrong), 0.6 (right) -> |0.9-1|*1/4 + |0.8-1|*1/4 + |0.6-0.5|*2/4 = 0.025 + 0.05 + 0.05.
    scores = evaluate(torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([1, 0, 0, 0]))
    assert scores["ece"] == pytest.approx(0.125)


def test_agreement_overall_and_where_the_supervisor_is_wrong():
    labels = torch.tensor([1, 1, 0, 0])
    supervisor = torch.tensor([0.9, 0.2, 0.7, 0.1])  # wrong on examples 1 and 2
    student = torch.tensor([0.8, 0.3, 0.2, 0.4])  # copies the mistake on 1, fixes 2
    scores = agreement(student, supervisor, labels)
    assert scores == {"agreement": pytest.approx(0.75), "agreement_where_supervisor_wrong": pytest.approx(0.5)}
    perfect = agreement(student, labels.float(), labels)
    assert math.isnan(perfect["agreement_where_supervisor_wrong"])


def test_margin_is_the_mean_distance_from_a_coin_flip():
    assert evaluate(torch.tensor([0.9, 0.2, 0.5, 0.4]), torch.tensor([1, 0, 0, 1]))["margin"] == pytest.approx(0.2)


def test_gap_noise_is_two_standard_errors_of_a_difference_of_accuracies():
    # sqrt((0.7 * 0.3 + 0.8 * 0.2) / 1000) = sqrt(0.00037) = 0.01924
    assert gap_noise(0.7, 0.8, 1000) == pytest.approx(2 * 0.019235, abs=1e-5)
    assert pgr_status(0.70, 0.80, 1000) == "ok"
    assert pgr_status(0.70, 0.73, 1000) == "gap within noise"  # 3 points < 3.8 points of noise
    assert pgr_status(0.70, 0.70, 1000) == "ceiling <= weak"
