import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import accuracy, read_wandb_run, saved, split_labels

from w2s_lightning import config, methods, pipeline, tasks
from w2s_lightning.errors import ConfigError, TrainingError
from w2s_lightning.metrics import pgr
from w2s_lightning.runner import TRAINING, StageRunner


def read_results(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())


@pytest.mark.slow
def test_whole_pipeline_then_a_second_loss_reuses_weak_labels_and_ceiling(make_cfg, tiny_overrides, caplog):
    caplog.set_level(logging.INFO, logger="w2s_lightning")
    first = make_cfg(*tiny_overrides, "loss=xent")
    results = pipeline.run(first)
    assert read_results(first)["stages"] == results["stages"]
    stages = results["stages"]
    assert set(stages) == {"weak", "ceiling", "transfer"}
    # Weak and ceiling learn ground truth of half A; the transfer learns the weak labels of half B.
    specs = {role: json.loads((Path(s["path"]) / "spec.json").read_text()) for role, s in stages.items()}
    assert [specs[r]["rows"][0] for r in ("weak", "ceiling", "transfer")] == ["train_a", "train_a", "train_b"]
    assert specs["transfer"]["labels"] == stages["weak"]["key"]
    assert not any(s["reused"] for s in stages.values())
    labels = split_labels(first)
    for s in stages.values():  # the accuracy is that of the predictions the cache holds
        assert s["acc"] == pytest.approx(accuracy(s, labels))
    assert stages["weak"]["n_train"] == 48 and stages["transfer"]["n_train"] == 48
    assert results["n_test"] == 64 and results["class_balance"]["test"]["rows"] == 64
    expected = pgr(stages["weak"]["acc"], stages["transfer"]["acc"], stages["ceiling"]["acc"])
    assert results["pgr"] == pytest.approx(expected, nan_ok=True)
    assert results["pgr_defined"] == (expected == expected)
    assert results["config"]["loss"]["name"] == "xent"

    caplog.clear()
    second = make_cfg(*tiny_overrides, "loss=aux_conf")
    again = pipeline.run(second)
    assert again["stages"]["weak"]["reused"] and again["stages"]["ceiling"]["reused"]
    assert not again["stages"]["transfer"]["reused"]
    assert again["stages"]["weak"]["key"] == stages["weak"]["key"]
    assert again["stages"]["weak"]["acc"] == stages["weak"]["acc"]
    assert again["stages"]["transfer"]["key"] != stages["transfer"]["key"]
    log = caplog.text
    assert "weak: reusing tiny-bert" in log and "ceiling: reusing tiny-llama" in log
    assert "weak: training" not in log and "ceiling: training" not in log

    rerun = pipeline.run(make_cfg(*tiny_overrides, "loss=aux_conf"))
    assert all(s["reused"] for s in rerun["stages"].values())
    assert rerun["stages"]["transfer"]["acc"] == again["stages"]["transfer"]["acc"]


@pytest.mark.slow
def test_wandb_offline_runs_hold_the_logged_metrics(make_cfg, tiny_overrides):
    cfg = make_cfg(*tiny_overrides, "logger.mode=offline", "seed=7")
    results = pipeline.run(cfg)
    runs = {}
    for run_dir in (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"):
        record = read_wandb_run(run_dir)
        runs[record["job_type"]] = record
    assert set(runs) == {"weak", "ceiling", "transfer", "summary"}
    for role in ("weak", "ceiling", "transfer"):
        summary = runs[role]["summary"]
        assert summary["test/acc"] == pytest.approx(results["stages"][role]["acc"])
        assert "train/loss" in summary and "val/acc" in summary
        assert runs[role]["state"] == "finished"
        assert runs[role]["group"] == "interactive"  # outside a Hydra app: no sweep to group by
        assert "pair:tiny-bert->tiny-llama" in runs[role]["tags"]
    summary = runs["summary"]["summary"]
    assert summary["pgr_defined"] == results["pgr_defined"]
    if results["pgr_defined"]:  # W&B leaves NaN out of a run's summary
        assert summary["pgr"] == pytest.approx(results["pgr"])
    assert summary["transfer/acc"] == pytest.approx(results["stages"]["transfer"]["acc"])


@pytest.mark.slow
def test_nan_loss_stops_with_advice_and_caches_nothing(make_cfg, tiny_overrides):
    cfg = make_cfg(*tiny_overrides, "weak.lr=1e30")
    with pytest.raises(TrainingError, match="Lower the learning rate"):
        pipeline.run(cfg)
    stage_dir = Path(cfg.paths.stage_dir)
    assert not [p for p in stage_dir.iterdir() if not p.name.endswith(".lock") and not p.name.startswith(".")]


@pytest.mark.parametrize(
    "overrides, refusal",
    [
        (["trainer.devices=2"], "trainer.strategy=auto: set trainer.strategy=ddp"),
        (["trainer.devices=2", "trainer.strategy=ddp_spawn"], "Spawned or forked ranks cannot share the stage cache"),
        (["trainer.devices=auto"], "give a number of devices"),
        (
            ["trainer.devices=2", "trainer.strategy=ddp", "strong.minibatch_size=16"],
            r"minibatch_size=16 x 2 ranks \(trainer.devices x num_nodes\)",
        ),
        (["trainer.devices=2", "trainer.strategy=ddp", "trainer.num_nodes=2"], "hydra/launcher=slurm"),
    ],
)
def test_multi_device_settings_that_cannot_run_are_refused_before_training(
    make_cfg, tiny_overrides, overrides, refusal, tmp_path
):
    with pytest.raises(ConfigError, match=refusal):
        pipeline.run(make_cfg(*tiny_overrides, *overrides))
    assert not (tmp_path / "cache" / "stages").exists()


@pytest.mark.parametrize(
    "flags, precision",
    [("fpu sse avx2", "32-true"), ("avx2 avx512f avx512_bf16", "bf16-mixed"), ("avx2 amx_bf16 amx_tile", "bf16-mixed")],
)
def test_cpu_precision_is_bf16_only_where_the_cpu_has_bf16_units(flags, precision):
    assert config.cpu_precision(f"processor\t: 0\nflags\t\t: {flags}\n") == precision


def test_the_cpu_trainer_takes_this_cpus_precision(make_cfg):
    assert make_cfg().trainer.precision == config.cpu_precision()


@pytest.mark.slow
def test_a_crashed_transfer_keeps_the_finished_stages(make_cfg, tiny_overrides):
    # A NaN-producing loss makes the transfer fail after weak and ceiling have finished.
    with pytest.raises(TrainingError, match="stage 'transfer'"):
        pipeline.run(make_cfg(*tiny_overrides, "loss=product", "loss.fn.alpha=nan"))
    retry = pipeline.run(make_cfg(*tiny_overrides, "loss=xent"))
    assert retry["stages"]["weak"]["reused"] and retry["stages"]["ceiling"]["reused"]
    assert not retry["stages"]["transfer"]["reused"]


@pytest.mark.slow
def test_same_config_in_a_fresh_cache_gives_the_same_numbers(make_cfg, tiny_overrides, tmp_path):
    first = pipeline.run(make_cfg(*tiny_overrides))
    again = pipeline.run(make_cfg(*tiny_overrides, f"paths.cache_dir={tmp_path / 'other-cache'}"))
    assert not any(s["reused"] for s in again["stages"].values())
    for role in ("weak", "ceiling", "transfer"):
        assert again["stages"][role]["acc"] == first["stages"][role]["acc"]
        assert again["stages"][role]["auroc"] == pytest.approx(first["stages"][role]["auroc"], abs=1e-6)


@pytest.mark.slow
def test_students_learn_their_supervisors_labels_of_their_own_rows(make_cfg, tiny_overrides, tiny_bert):
    cfg = make_cfg(
        *tiny_overrides,
        "method=bootstrap",
        f"method.rungs.minilm_l6.path={tiny_bert}",
        "method.rungs.minilm_l6.minibatch_size=16",
    )
    splits = tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)
    runner, requests = StageRunner(cfg, splits), {r.role: r for r in methods.recipe(cfg)}
    weak = runner.run([requests["weak"]])["weak"]
    for role, rows in (("transfer", range(0, 48)), ("rung1", range(0, 24)), ("bootstrap", range(24, 48))):
        request = requests[role]
        kept = runner.kept_rows(request, weak)
        view, targets = runner.with_rows(request, kept, splits), runner.targets(request, weak, kept)
        assert kept == list(rows)
        assert targets[TRAINING].tolist() == weak.predictions["train_b"][rows.start : rows.stop].tolist()
        assert view[TRAINING]["label"] == splits["train_b"]["label"][rows.start : rows.stop]  # same rows
    assert set(splits) == {"train_a", "train_b", "val", "test"}  # the task's splits are never changed
    with pytest.raises(ConfigError, match="predicts only"):
        runner.kept_rows(requests["transfer"], replace(weak, predictions={"test": weak.predictions["test"]}))
    # A supervisor's NaN label (a filter, relabel.py) drops that row; the others stay in order.
    filtered = weak.predictions["train_b"].clone()
    filtered[[3, 10]] = float("nan")
    kept = runner.kept_rows(requests["transfer"], replace(weak, predictions={**weak.predictions, "train_b": filtered}))
    assert kept == [i for i in range(48) if i not in (3, 10)]


@pytest.mark.slow
def test_each_tokenizer_reads_the_splits_once_and_stages_report_their_speed(make_cfg, tiny_overrides):
    cfg = make_cfg(*tiny_overrides)
    runner = StageRunner(cfg, tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed))
    stages = runner.run(methods.recipe(cfg))
    # weak (tiny BERT), then ceiling and transfer (tiny Llama): two tokenisations for three stages.
    assert sorted(key[0] for key in runner.tokenizations) == sorted([cfg.weak.path, cfg.strong.path])
    for stage in stages.values():
        metrics = stage.metrics
        assert metrics["train_examples_per_s"] > 0 and metrics["predict_examples_per_s"] > 0
        assert (
            0 <= metrics["train_padding"] < 1 and metrics["train_tokens_per_s"] <= metrics["train_padded_tokens_per_s"]
        )


@pytest.mark.slow
def test_an_empty_validation_split_is_not_predicted(make_cfg, tiny_overrides):
    """task.n_val=0 once crashed when the weak stage predicted the empty val split."""
    results = pipeline.run(make_cfg(*tiny_overrides, "task.n_val=0"))
    weak = results["stages"]["weak"]
    assert "val_ece" not in weak and "label_ece" in weak  # no val scores; half B's labels scored
    assert all("val" not in saved(s) for s in results["stages"].values())
    assert {"train_b", "test"} <= saved(weak).keys()


def test_reuse_results_returns_a_finished_job_without_training_and_reruns_a_changed_one(make_cfg, caplog):
    from omegaconf import OmegaConf

    from w2s_lightning.redact import redacted

    cfg = make_cfg("reuse_results=true")
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    finished = {"task": "sst2", "stages": {}, "config": redacted(OmegaConf.to_container(cfg, resolve=True))}
    (folder / "results.json").write_text(json.dumps(finished))
    # Where files go and logging are no part of the comparison: a committed folder on a new machine.
    moved = make_cfg("reuse_results=true", "logger.mode=disabled", f"paths.cache_dir={folder / 'fresh-cache'}")
    assert pipeline.run(moved) == finished
    assert not (folder / "fresh-cache").exists()  # nothing trained, no cache touched
    assert pipeline.results_of_same_config(make_cfg("seed=1"), folder / "results.json") is None
    assert "holds results of another config" in caplog.text


@pytest.mark.slow
def test_validating_more_often_changes_no_weight_of_a_ground_truth_stage(make_cfg, tiny_overrides, tmp_path):
    """Issue 24, item 9: a stage on ground truth validates every select.val_every epoch, which
    its key leaves out; validation takes nothing from the training order, so the weights and
    predictions are the same."""
    predictions = []
    for val_every in (1.0, 0.25):
        cfg = make_cfg(*tiny_overrides, f"select.val_every={val_every}", f"paths.cache_dir={tmp_path / str(val_every)}")
        runner = StageRunner(cfg, tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed))
        weak = runner.run([next(r for r in methods.recipe(cfg) if r.role == "weak")])["weak"]
        predictions.append(weak.predictions)
    assert all(torch.equal(predictions[0][split], predictions[1][split]) for split in predictions[0])
