"""The stage key (stage_key.py): everything that changes a stage's result changes its key, and
nothing else does. Pure: composing configs needs no data and trains nothing."""

import json

import pytest

from w2s_lightning import methods, stage_key, tasks
from w2s_lightning.cache import content_key

SUPERVISOR = {"supervisor": "gt-weak", "init": None, "features": None}


def key(cfg, role="ceiling", keys=None, data="rows-v1") -> str:
    request = next(r for r in methods.recipe(cfg) if r.role == role)
    keys = keys or (SUPERVISOR if request.supervisor else {"supervisor": None, "init": None, "features": None})
    return f"{stage_key.kind_of(request)}-{content_key(stage_key.spec(cfg, data, request, keys))}"


def test_a_stage_key_changes_with_what_changes_results_only(make_cfg):
    base = make_cfg()
    assert key(base) == key(make_cfg("logger.mode=offline", "trainer.log_every_n_steps=1", "paths.log_dir=elsewhere"))
    for change in (
        "seed=1",
        "task.n_train=1000",
        "strong.lr=1e-5",
        "train.epochs=3",
        "trainer.precision=16-mixed",
        "train.predict_dtype=bfloat16",
        "finetune=lora",
        "finetune=probe",
        "loss@ground_truth_loss=product",
    ):
        assert key(make_cfg(change)) != key(base), change
    assert key(base, "transfer") != key(make_cfg("loss=aux_conf"), "transfer")
    assert key(base, "transfer") != key(base, "transfer", {**SUPERVISOR, "supervisor": "gt-other"})
    assert key(base, data="rows-v2") != key(base)
    assert key(base, keys={"supervisor": None, "init": "generative-aaa", "features": None}) != key(base)
    # The students' loss is no part of a stage on ground truth, so a sweep over losses shares it.
    assert key(make_cfg("loss=aux_conf")) == key(base)


def test_a_model_on_ground_truth_is_one_stage_whether_weak_or_ceiling(make_cfg):
    assert key(make_cfg("model@weak=mpnet_base"), "weak") == key(make_cfg())


def test_methods_share_the_stages_they_have_in_common(make_cfg):
    base = make_cfg()
    for method in (["method=bootstrap"], ["method=generative"]):
        assert key(make_cfg(*method), "weak") == key(base, "weak"), method
    bootstrap = make_cfg("method=bootstrap")
    assert key(bootstrap, "transfer") == key(base, "transfer") and key(bootstrap) == key(base)


def test_the_kind_of_a_stage_prefixes_its_key(make_cfg):
    cfg = make_cfg("method=generative")
    assert [key(cfg, role).split("-")[0] for role in ("generative", "weak", "transfer")] == [
        "generative",
        "gt",
        "transfer",
    ]


@pytest.mark.parametrize(
    "override",
    [
        "+trainer.max_steps=5",
        "+trainer.limit_train_batches=2",
        "+trainer.gradient_clip_val=1.0",
        "trainer.devices=2",
        "trainer.accelerator=gpu",
        "trainer.precision=16-mixed",
    ],
)
def test_every_trainer_setting_that_changes_a_result_changes_the_stage_key(make_cfg, override):
    assert key(make_cfg(override), "weak") != key(make_cfg(), "weak")


def test_display_settings_do_not_change_the_stage_key(make_cfg):
    assert key(make_cfg("trainer.log_every_n_steps=50", "+trainer.enable_progress_bar=false")) == key(make_cfg())
    assert key(make_cfg("weak.about='a note for the report'")) == key(make_cfg())


def test_student_selection_leaves_the_weak_and_ceiling_keys_alone(make_cfg):
    plain, selecting = make_cfg(), make_cfg("select=weak_val_early_stop", "select.val_every=0.25")
    assert key(selecting, "weak") == key(plain, "weak") and key(selecting) == key(plain)
    assert key(selecting, "transfer") != key(plain, "transfer")  # the student's does change


def test_data_fingerprint_follows_the_rows(tmp_path, make_cfg):
    path = tmp_path / "rows.jsonl"
    rows = [{"text": f"row {i}", "label": i % 2} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = make_cfg("task=custom", f"task.path={path}", "task.n_train=20", "task.n_val=0").task
    before = stage_key.fingerprint(tasks.load_splits(task, None, seed=0))
    assert stage_key.fingerprint(tasks.load_splits(task, None, seed=0)) == before
    rows[5]["text"] = "an edited row"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert stage_key.fingerprint(tasks.load_splits(task, None, seed=0)) != before


def test_hidden_layer_changes_the_key_and_its_default_keeps_the_old_one(make_cfg):
    assert key(make_cfg("strong.hidden_layer=3")) != key(make_cfg())
    assert "hidden_layer" not in stage_key.model_settings(make_cfg().strong)  # stages cached before it keep keys


def feature_key(cfg, split="test") -> str:
    request = methods.StageRequest(f"features:{split}", cfg.strong, kind="features", predicts=(split,))
    return content_key(stage_key.spec(cfg, "rows-v1", request, {"init": None}))


def test_one_number_written_two_ways_is_one_key(make_cfg):
    """0 and 0.0, 1e-3 and 0.001: the same setting, the same stage (issue 24, item 10)."""
    assert key(make_cfg("train.warmup_frac=0")) == key(make_cfg("train.warmup_frac=0.0"))
    assert key(make_cfg("strong.lr=1e-3")) == key(make_cfg("strong.lr=0.001"))
    assert key(make_cfg("strong.lr=1e-3")) != key(make_cfg("strong.lr=2e-3"))


def test_settings_that_cannot_change_a_result_leave_the_key_alone(make_cfg):
    """Item 11: AdamW's kernel and torch.compile reorder float sums only; a selection rule with
    no callbacks keeps the last weights whatever it validates; a frozen forward pass reads no
    training setting; a null setting is an absent one."""
    base = make_cfg()
    for override in ("train.adamw=for_loop", "train.compile=true", "train.fused_gelu=false"):
        assert key(make_cfg(override)) == key(base) and key(make_cfg(override), "transfer") == key(base, "transfer")
    assert key(make_cfg("select.val_every=0.5"), "transfer") == key(base, "transfer")  # select=last
    assert key(make_cfg("select=weak_val"), "transfer") != key(base, "transfer")
    for override in ("strong.lr=1e-3", "strong.minibatch_size=8", "strong.params=1e9"):
        assert feature_key(make_cfg(override)) == feature_key(base), override
    assert feature_key(make_cfg("strong.max_length=64")) != feature_key(base)
    assert not {"revision", "hidden_layer", "dtype"} & set(stage_key.model_settings(base.strong))  # null: left out


def test_a_generative_stage_is_keyed_by_dropout(make_cfg):
    """Item 8: generative fine-tuning trains with train.dropout."""
    assert key(make_cfg("method=generative"), "generative") != key(
        make_cfg("method=generative", "train.dropout=true"), "generative"
    )


def test_the_weights_a_model_names_are_in_its_key(make_cfg, tmp_path):
    """Item 12: a hub revision, and a local folder's files (new weights under the same path)."""
    assert key(make_cfg("strong.revision=abc123")) != key(make_cfg())
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"old weights")
    before = key(make_cfg(f"strong.path={folder}"))
    assert key(make_cfg(f"strong.path={folder}")) == before
    (folder / "model.safetensors").write_bytes(b"newer weights")
    assert key(make_cfg(f"strong.path={folder}")) != before
