"""Beyond naive fine-tuning, on tiny models: bootstrapping, generative fine-tuning, model
selection without ground truth, linear probes, LoRA, agreement and calibration."""

import json
import logging
import re
from pathlib import Path

import hydra
import pytest
import torch
from conftest import saved, split_labels
from safetensors.torch import load_file
from transformers import AutoModel

from w2s_lightning import methods, pipeline, preflight, tasks
from w2s_lightning.errors import ConfigError
from w2s_lightning.metrics import agreement, evaluate
from w2s_lightning.models import load_classifier
from w2s_lightning.runner import StageRunner

TINY_RUNG = [
    "method=bootstrap",
    "method.rungs.minilm_l6.minibatch_size=16",
    "method.rungs.minilm_l6.max_length=64",
]


def spec_of(stage: dict) -> dict:
    return json.loads((Path(stage["path"]) / "spec.json").read_text())


@pytest.mark.slow
def test_bootstrapping_passes_labels_up_the_rungs_through_disjoint_parts_of_half_b(make_cfg, tiny_overrides, tiny_bert):
    cfg = make_cfg(*tiny_overrides, *TINY_RUNG, f"method.rungs.minilm_l6.path={tiny_bert}")
    results = pipeline.run(cfg)
    stages = results["stages"]
    assert set(stages) == {"weak", "ceiling", "transfer", "rung1", "bootstrap"}
    assert results["method"] == "bootstrap"
    # weak -> rung1 on the first half of B, rung1 -> strong on the second; the direct transfer sees all of B.
    assert spec_of(stages["rung1"])["rows"] == ["train_b", 0, 2]
    assert spec_of(stages["rung1"])["labels"] == stages["weak"]["key"]
    assert spec_of(stages["bootstrap"])["rows"] == ["train_b", 1, 2]
    assert spec_of(stages["bootstrap"])["labels"] == stages["rung1"]["key"]
    assert stages["rung1"]["n_train"] + stages["bootstrap"]["n_train"] == stages["transfer"]["n_train"] == 48
    # The bootstrapped student's agreement is measured against its own supervisor, rung 1.
    test = {
        role: load_file(str(Path(stages[role]["path"]) / "predictions.safetensors"))["test"]
        for role in ("rung1", "bootstrap")
    }
    labels = torch.tensor(tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)["test"]["label"])
    assert stages["bootstrap"]["agreement"] == pytest.approx(
        agreement(test["bootstrap"], test["rung1"], labels)["agreement"]
    )
    assert "pgr_bootstrap" in results and results["class_balance"].keys() == {"train_a", "train_b", "val", "test"}
    # Without rungs the same experiment reuses every stage it shares with the bootstrapped one.
    plain = pipeline.run(make_cfg(*tiny_overrides))
    assert all(plain["stages"][r]["reused"] for r in ("weak", "ceiling", "transfer"))
    assert plain["method"] == "direct" and "pgr_bootstrap" not in plain


def test_rungs_without_the_bootstrap_method_are_refused(make_cfg, tiny_overrides):
    rung = ["+method/rungs=minilm_l6", "method.rungs.minilm_l6.minibatch_size=16"]
    for method in ("direct", "generative"):
        with pytest.raises(ConfigError, match="use method=bootstrap"):
            preflight.check_config(make_cfg(*tiny_overrides, *rung, f"method={method}"))
    preflight.check_config(
        make_cfg(*tiny_overrides, *rung, "method=generative", "method.then=w2s_lightning.methods.bootstrap")
    )
    with pytest.raises(ConfigError, match="needs intermediate models"):
        preflight.check_config(
            make_cfg(*tiny_overrides, "method=generative", "method.then=w2s_lightning.methods.bootstrap")
        )


@pytest.mark.slow
@pytest.mark.parametrize("strong", ["tiny_llama", "tiny_bert"])
def test_generative_finetuning_changes_the_strong_weights_for_ceiling_and_transfer(
    make_cfg, tiny_overrides, tiny_llama, tiny_bert, strong, caplog
):
    caplog.set_level(logging.INFO, logger="w2s_lightning")
    folder = {"tiny_llama": tiny_llama, "tiny_bert": tiny_bert}[strong]
    pooling, objective = ("last", "causal_lm") if strong == "tiny_llama" else ("mean", "masked_lm")
    cfg = make_cfg(
        *tiny_overrides,
        f"strong.path={folder}",
        f"strong.pooling={pooling}",
        f"strong.objective={objective}",
        "method=generative",
        "method.lr=1e-3",
    )
    results = pipeline.run(cfg)
    assert f"on the task's unlabeled text ({objective})" in caplog.text
    key = results["stages"]["generative"]["key"]
    assert key.startswith("generative-")
    for role in ("ceiling", "transfer"):
        assert spec_of(results["stages"][role])["init"] == key
    assert spec_of(results["stages"]["weak"])["init"] is None  # the weak model is not touched
    tuned = AutoModel.from_pretrained(Path(cfg.paths.stage_dir) / key / "model")
    original = AutoModel.from_pretrained(folder)
    changed = [n for n, p in tuned.state_dict().items() if not torch.equal(p, original.state_dict()[n])]
    assert changed  # the language-model objective moved the backbone
    assert results["method"] == "generative"


@pytest.mark.slow
def test_generative_then_bootstrap_starts_only_the_strong_stages_from_the_tuned_weights(
    make_cfg, tiny_overrides, tiny_bert
):
    cfg = make_cfg(
        *tiny_overrides,
        "method=generative",
        "+method/rungs=minilm_l6",
        *TINY_RUNG[1:],
        f"method.rungs.minilm_l6.path={tiny_bert}",
        "method.then=w2s_lightning.methods.bootstrap",
        "strong.objective=causal_lm",
    )
    stages = pipeline.run(cfg)["stages"]
    key = stages["generative"]["key"]
    assert {role: spec_of(stages[role])["init"] for role in ("weak", "rung1", "ceiling", "transfer", "bootstrap")} == {
        "weak": None,
        "rung1": None,
        "ceiling": key,
        "transfer": key,
        "bootstrap": key,
    }


@pytest.mark.slow
@pytest.mark.parametrize("select,monitor", [("weak_val", "val/supervisor_acc"), ("oracle_val", "val/acc")])
def test_model_selection_picks_a_checkpoint_and_says_which_rule(make_cfg, tiny_overrides, select, monitor):
    cfg = make_cfg(*tiny_overrides, f"select={select}", "train.epochs=2", "select.val_every=0.5")
    assert hydra.utils.instantiate(cfg.select.callbacks.checkpoint).monitor == monitor
    results = pipeline.run(cfg)
    assert results["config"]["select"]["name"] == select and results["method"] == "direct"
    for role, stage in results["stages"].items():
        # Selection is the student's: weak and ceiling keep their last weights, as in the baseline.
        student = role == "transfer"
        assert stage["selection"] == (select if student else "last")
        # 48 rows in 16-row batches: 3 steps an epoch, validated every other batch -> a step in 1..6.
        assert 1 <= stage["selected_step"] <= 6 if student else stage["selected_step"] == 6
        assert not (Path(stage["path"]) / "checkpoints").exists()  # checkpoints are not kept in the cache


@pytest.mark.slow
def test_weak_val_selection_validates_the_transfer_against_the_weak_labels(make_cfg, tiny_overrides):
    cfg = make_cfg(*tiny_overrides, "select=weak_val")
    results = pipeline.run(cfg)
    weak_val = load_file(str(Path(results["stages"]["weak"]["path"]) / "predictions.safetensors"))["val"]
    runner = StageRunner(cfg, tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed))
    requests = methods.recipe(cfg)
    stages = runner.run(requests)
    assert all(stage.reused for stage in stages.values())
    weak, transfer = stages["weak"], next(r for r in requests if r.role == "transfer")
    kept = runner.kept_rows(transfer, weak)
    datamodule = runner.datamodule(transfer, kept, runner.targets(transfer, weak, kept), None)
    datamodule.setup()
    assert datamodule.prepared["val"]["target"] == pytest.approx(weak_val.tolist())  # not the ground truth


def test_selection_settings_that_cannot_work_are_refused(make_cfg, tiny_overrides):
    with pytest.raises(ConfigError, match="set task.n_val > 0"):
        pipeline.run(make_cfg(*tiny_overrides, "select=weak_val", "task.n_val=0"))


@pytest.mark.slow
def test_early_stopping_stops_the_student_on_its_supervisors_labels(make_cfg, tiny_overrides):
    cfg = make_cfg(
        *tiny_overrides,
        "select=weak_val_early_stop",
        "train.epochs=6",
        "select.val_every=1.0",
        "select.callbacks.early_stopping.patience=1",
    )
    stopper = hydra.utils.instantiate(cfg.select.callbacks.early_stopping)
    assert (stopper.monitor, stopper.patience) == ("val/supervisor_acc", 1)
    transfer = pipeline.run(cfg)["stages"]["transfer"]
    assert transfer["selection"] == "weak_val_early_stop" and 1 <= transfer["selected_step"] <= 18


@pytest.mark.slow
def test_linear_probes_compute_features_once_and_train_only_the_head(make_cfg, tiny_overrides, caplog):
    caplog.set_level(logging.INFO, logger="w2s_lightning")
    cfg = make_cfg(*tiny_overrides, "finetune=probe")
    results = pipeline.run(cfg)
    assert results["method"] == "direct" and results["config"]["finetune"]["name"] == "probe"
    features = sorted(p for p in Path(cfg.paths.stage_dir).glob("features-*") if p.is_dir())
    assert len(features) == 8  # one per model (tiny-bert, tiny-llama) and split
    stored = sorted((n, len(t)) for f in features for n, t in load_file(str(f / "predictions.safetensors")).items())
    assert stored == [("test", 64)] * 2 + [("train_a", 48)] * 2 + [("train_b", 48)] * 2 + [("val", 16)] * 2
    assert caplog.text.count("computing tiny-llama's frozen features") == 4  # ceiling and transfer share them
    caplog.clear()
    again = pipeline.run(make_cfg(*tiny_overrides, "finetune=probe", "loss=aux_conf"))
    assert "frozen features" not in caplog.text and "reusing tiny-llama (features)" in caplog.text
    assert again["stages"]["weak"]["reused"] and not again["stages"]["transfer"]["reused"]
    # Another seed draws other training rows, but the test split and its features stay.
    caplog.clear()
    pipeline.run(make_cfg(*tiny_overrides, "finetune=probe", "seed=1"))
    computed = re.findall(r"computing tiny-llama's frozen features of (\w+)", caplog.text)
    assert sorted(computed) == ["train_a", "train_b", "val"]


@pytest.mark.slow
def test_lora_trains_adapters_and_the_head_only(make_cfg, tiny_overrides):
    cfg = make_cfg(*tiny_overrides, "finetune=lora")
    classifier = load_classifier(cfg.strong, cfg.paths.zoo_dir, cfg.finetune)
    trainable = {n for n, p in classifier.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert "head.weight" in trainable
    results = pipeline.run(cfg)
    assert results["config"]["finetune"]["name"] == "lora"
    # The zero-initialised head predicts exactly 0.5 until it trains: the transfer moved off it.
    assert (saved(results["stages"]["transfer"])["test"] - 0.5).abs().max() > 1e-4


@pytest.mark.slow
def test_every_stage_reports_calibration_and_transfers_report_agreement(make_cfg, tiny_overrides):
    cfg = make_cfg(*tiny_overrides)
    results = pipeline.run(cfg)
    labels = split_labels(cfg)
    for stage in results["stages"].values():  # the scores of the predictions the cache holds
        assert stage["ece"] == pytest.approx(evaluate(saved(stage)["test"], labels)["ece"])
    transfer, weak = results["stages"]["transfer"], results["stages"]["weak"]
    same = (saved(transfer)["test"] > 0.5) == (saved(weak)["test"] > 0.5)
    assert transfer["agreement"] == pytest.approx(same.float().mean().item())
    assert "agreement" not in results["stages"]["ceiling"]  # ground truth supervises it


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_lora_wraps_the_paper_ladders_architectures(family):
    """The paper_nlp_lora preset's families (GPT-2's Conv1D layers, Qwen2's Linear ones), as tiny random models."""
    from omegaconf import OmegaConf
    from transformers import GPT2Config, Qwen2Config

    from w2s_lightning.models import Classifier, add_lora

    config = (
        GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2)
        if family == "gpt2"
        else Qwen2Config(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
        )
    )
    lora = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "finetune" / "lora.yaml")
    classifier = Classifier(add_lora(AutoModel.from_config(config), lora), "last")
    adapted = {n.split(".lora_")[0] for n, p in classifier.named_parameters() if p.requires_grad and "lora_" in n}
    assert len(adapted) >= 4 * config.num_hidden_layers  # attention and MLP projections in every layer
    ids = torch.randint(0, 100, (2, 5))
    assert classifier(ids, torch.ones_like(ids)).shape == (2, 2)


@pytest.mark.slow
def test_generative_finetuning_of_a_model_that_cannot_load_says_why(make_cfg, tiny_overrides, tmp_path):
    from w2s_lightning.errors import ModelError

    cfg = make_cfg(*tiny_overrides, "method=generative", f"strong.path={tmp_path / 'no-such-model'}")
    with pytest.raises(ModelError, match="cannot load .*no-such-model"):
        pipeline.run(cfg)
    assert not [p for p in Path(cfg.paths.stage_dir).glob("generative-*") if p.is_dir()]  # nothing half-built
