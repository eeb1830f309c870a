"""The methods zoo's relabelling and filtering rules on hand-made features and labels where
the right answer is known, their identities, and each method through ``python run.py``."""

import json
import math

import pytest
import torch
from test_sweep import run_py

from w2s_lightning import methods, pipeline
from w2s_lightning.errors import ConfigError
from w2s_lightning.relabel import (
    KnnProbe,
    LogisticProbe,
    RelabelInputs,
    confidence_filter,
    ensemble_mean,
    probe_filter,
    probe_relabel,
    topo_filter,
)

FLIPPED = [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]  # 5 per cluster, spread along each


def two_clusters() -> RelabelInputs:
    """100 rows on a line in two far-apart clusters (rows 0-49 near 0, 50-99 near 100),
    labelled by cluster, with the labels of ``FLIPPED`` reversed. Val and test: one row per
    cluster, labelled right."""
    generator = torch.Generator().manual_seed(0)
    position = torch.cat([torch.arange(50.0), 100 + torch.arange(50.0)])
    train = torch.stack([position, 0.01 * torch.randn(100, generator=generator)], dim=1)
    truth = (position >= 100).float()
    labels = truth.clone()
    labels[FLIPPED] = 1 - labels[FLIPPED]
    probe_rows = torch.tensor([[20.0, 0.0], [120.0, 0.0]])
    return RelabelInputs(
        labels={"train_b": labels, "val": torch.tensor([0.0, 1.0]), "test": torch.tensor([0.0, 1.0])},
        features={"train_b": train, "val": probe_rows, "test": probe_rows},
    )


def dropped(labels: dict[str, torch.Tensor]) -> list[int]:
    return labels["train_b"].isnan().nonzero().squeeze(1).tolist()


@pytest.mark.parametrize("probe", [KnnProbe(k=10), LogisticProbe(l2=1e-3)], ids=["knn", "logistic"])
def test_a_probe_relabel_fixes_the_labels_flipped_inside_well_separated_clusters(probe):
    relabelled = probe_relabel(two_clusters(), probe)
    truth = (torch.arange(100) >= 50).float()
    assert ((relabelled["train_b"] > 0.5).float() == truth).all()
    assert (relabelled["test"] > 0.5).tolist() == [False, True]


@pytest.mark.parametrize(
    "rule",
    [
        lambda inputs: probe_filter(inputs, KnnProbe(k=10), contamination=0.1),
        lambda inputs: probe_filter(inputs, LogisticProbe(), contamination=0.1),
        lambda inputs: topo_filter(inputs, contamination=0.1, k_cc=6, k_zeta=6),
    ],
    ids=["knn", "logistic", "topo"],
)
def test_a_filter_drops_exactly_the_planted_contaminated_rows(rule):
    inputs = two_clusters()
    filtered = rule(inputs)
    assert dropped(filtered) == FLIPPED
    kept = [i for i in range(100) if i not in FLIPPED]
    assert filtered["train_b"][kept].tolist() == inputs.labels["train_b"][kept].tolist()
    assert filtered["val"].tolist() == inputs.labels["val"].tolist()  # only half B is filtered


def test_topo_filter_takes_the_rest_from_the_neighbours_when_the_components_drop_too_few():
    # Contamination 0.2: the 10 off-component rows, then the 10 furthest from their neighbours' mean.
    filtered = topo_filter(two_clusters(), contamination=0.2, k_cc=6, k_zeta=6)
    assert len(dropped(filtered)) == 20 and set(FLIPPED) <= set(dropped(filtered))


def test_confidence_filter_keeps_the_most_confident_share():
    labels = torch.tensor([0.9, 0.55, 0.1, 0.45, 0.7, 0.02])
    inputs = RelabelInputs(labels={"train_b": labels, "val": labels[:2], "test": labels[:2]})
    assert dropped(confidence_filter(inputs, keep=0.5)) == [1, 3, 4]  # the three nearest 0.5
    with pytest.raises(ConfigError, match="keep"):
        confidence_filter(inputs, keep=0.0)


def test_the_ensemble_is_the_mean_of_its_supervisors_labels():
    inputs = RelabelInputs(
        labels={"train_b": torch.tensor([0.9, 0.2]), "test": torch.tensor([0.6])},
        others=[{"train_b": torch.tensor([0.5, 0.4]), "test": torch.tensor([0.0])}],
    )
    mean = ensemble_mean(inputs)
    assert mean["train_b"].tolist() == pytest.approx([0.7, 0.3]) and mean["test"].tolist() == pytest.approx([0.3])


@pytest.mark.parametrize(
    "rule",
    [
        lambda inputs: probe_filter(inputs, KnnProbe(k=10), contamination=0.0),
        lambda inputs: probe_filter(inputs, LogisticProbe(), contamination=0.0),
        lambda inputs: confidence_filter(inputs, keep=1.0),
        lambda inputs: ensemble_mean(RelabelInputs(labels=inputs.labels)),
    ],
    ids=["knn_filter", "logreg_filter", "confidence_filter", "ensemble_of_one"],
)
def test_each_rule_at_its_identity_setting_hands_back_the_weak_labels(rule):
    inputs = two_clusters()
    assert {k: v.tolist() for k, v in rule(inputs).items()} == {k: v.tolist() for k, v in inputs.labels.items()}


def test_contamination_outside_its_range_is_refused():
    with pytest.raises(ConfigError, match="contamination"):
        probe_filter(two_clusters(), KnnProbe(), contamination=1.0)


def test_zero_strong_to_strong_rounds_is_direct_and_two_chain_from_the_transfer(make_cfg):
    cfg = make_cfg("method=s2s", "method.rounds=0")
    assert methods.recipe(cfg) == methods.direct(cfg)
    requests = methods.recipe(make_cfg("method=s2s", "method.rounds=2"))
    chain = [(r.role, r.supervisor) for r in requests[2:]]
    assert chain == [("s2s0", "weak"), ("s2s1", "s2s0"), ("transfer", "s2s1")]
    # Round 0 is direct's transfer: the same request under another role, so the same cached stage.
    assert requests[2].rows == methods.direct(cfg)[2].rows and requests[2].predicts == methods.direct(cfg)[2].predicts


def test_an_ensemble_member_as_large_as_the_student_is_refused(make_cfg):
    with pytest.raises(ConfigError, match="not smaller than the strong model"):
        methods.recipe(make_cfg("method=weak_ensemble", "model@strong=minilm_l6", "model@weak=minilm_l3"))


@pytest.mark.slow
def test_a_filter_that_keeps_every_row_trains_the_direct_transfer_again(make_cfg, tiny_overrides):
    direct = pipeline.run(make_cfg(*tiny_overrides))
    kept_all = pipeline.run(make_cfg(*tiny_overrides, "method=confidence_filter", "method.rule.keep=1.0"))
    assert kept_all["stages"]["relabelled"]["kept"] == 1.0
    assert not kept_all["stages"]["transfer"]["reused"]  # its own stage, trained on the same labels
    for metric in ("acc", "auroc"):
        assert kept_all["stages"]["transfer"][metric] == direct["stages"]["transfer"][metric]
    # The zoo's new losses train on the same stages: the window's midweak radius is set from the labels.
    for loss in (["loss=window", "loss.fn.radius=midweak"], ["loss=adapt_conf"]):
        run = pipeline.run(make_cfg(*tiny_overrides, *loss))
        assert run["stages"]["weak"]["reused"] and math.isfinite(run["stages"]["transfer"]["acc"])


ZOO = "direct,s2s,knn_relabel,logreg_relabel,knn_filter,logreg_filter,topo_filter,confidence_filter,weak_ensemble"


@pytest.mark.slow
def test_every_method_of_the_zoo_runs_through_run_py_sharing_its_stages(tmp_path, tiny_overrides, tiny_bert):
    tiny = [o for o in tiny_overrides if not o.startswith("task.n_train")] + ["task.n_train=128"]  # halves of 64
    # The ensemble's members (minilm_l3, minilm_l6) on tiny BERT's weights, at tiny sizes.
    members = [
        f"++method.members.{m}.{k}={v}"
        for m in ("minilm_l3", "minilm_l6")
        for k, v in {"path": tiny_bert, "minibatch_size": 16, "max_length": 64}.items()
    ]
    done = run_py(tmp_path / "cache", "-m", *tiny, f"method={ZOO}", *members, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["method"]: r for r in (json.loads(p.read_text()) for p in tmp_path.glob("sweep/*/results.json"))}
    assert set(results) == set(ZOO.split(","))
    assert all(math.isfinite(r["stages"]["transfer"]["acc"]) for r in results.values())
    # The weak model and the ceiling are trained once and shared by every method.
    for role in ("weak", "ceiling"):
        assert len({r["stages"][role]["key"] for r in results.values()}) == 1
        assert sum(not r["stages"][role]["reused"] for r in results.values()) == 1
    # s2s's first round is direct's transfer, reused.
    s2s = results["s2s"]["stages"]
    assert s2s["s2s0"]["key"] == results["direct"]["stages"]["transfer"]["key"] and s2s["s2s0"]["reused"]
    assert set(s2s) == {"weak", "ceiling", "s2s0", "s2s1", "transfer"}
    relabels = {m: r["stages"]["relabelled"] for m, r in results.items() if "relabelled" in r["stages"]}
    assert len(relabels) == 6 and len({s["key"] for s in relabels.values()}) == 6
    kept = {m: s["kept"] for m, s in relabels.items()}
    assert kept["knn_relabel"] == kept["logreg_relabel"] == 1 and kept["confidence_filter"] == 0.5
    assert kept["knn_filter"] == kept["logreg_filter"] == 58 / 64 and kept["topo_filter"] <= 58 / 64
    ensemble = results["weak_ensemble"]["stages"]
    assert set(ensemble) == {"weak", "weak:minilm_l3", "weak:minilm_l6", "ensemble", "ceiling", "transfer"}
    # The features every probe reads are computed once (one stage per split), then reused.
    assert "features: computing" in done.stdout + done.stderr
    assert (done.stdout + done.stderr).count("features: computing tiny-llama's frozen features of train_b") == 1
