"""Every offline task, and reward modelling, through `python run.py` for real: one multirun of
tiny models at tiny sizes (one process: a job costs its stages, not the imports)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import built_once_per_run, saved
from safetensors.torch import load_file
from test_sweep import multirun
from test_task_suite import LOCAL, REWARD

from w2s_lightning import pipeline

pytestmark = pytest.mark.slow
# hh_helpful runs through run.py in the README test (experiment=reward_cpu), at these sizes.
TASKS = LOCAL + [t for t in REWARD if t != "hh_helpful"]


@pytest.fixture(scope="module")
def every_task(tmp_path_factory, worker_id, tiny_bert, tiny_llama) -> dict[str, dict]:
    def sweep(root: Path) -> None:
        # One optimizer step per stage; 64 tokens per text keeps MultiRC's and QuAIL's passages cheap.
        done = multirun(
            root,
            root / "sweep",
            root / "cache",
            f"task={','.join(TASKS)}",
            "task.n_train=64",
            "task.n_val=16",
            "task.n_test=32",
            "train.batch_size=32",
            f"weak.path={tiny_bert}",
            "weak.name=tiny-bert",
            f"strong.path={tiny_llama}",
            "strong.name=tiny-llama",
            "strong.pooling=last",
            "strong.objective=causal_lm",
            "weak.max_length=64",
            "strong.max_length=64",
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    root = built_once_per_run(tmp_path_factory, worker_id, "every-task", sweep)
    results = [json.loads(p.read_text()) for p in (root / "sweep").glob("*/results.json")]
    return {r["task"]: r for r in results}


@pytest.mark.parametrize("task", TASKS)
def test_every_offline_task_runs_through_run_py(every_task, task):
    results = every_task[task]
    stages = results["stages"]
    assert set(stages) == {"weak", "ceiling", "transfer"}
    n_test = results["n_test"]
    assert n_test == min(32, results["class_balance"]["test"]["rows"])
    for stage in stages.values():  # scored on the test rows the stage predicted, one each
        predictions = saved(stage)["test"]
        assert len(predictions) == n_test and ((predictions > 0) & (predictions < 1)).all()
        assert stage["acc"] * n_test == pytest.approx(round(stage["acc"] * n_test)) and "auroc" in stage
    assert "pgr" in results


def test_a_reward_model_trains_on_pairs_and_hands_on_pair_probabilities(every_task):
    results = every_task["hh"]
    weak = Path(results["stages"]["weak"]["path"])
    labels = load_file(str(weak / "predictions.safetensors"))
    # The weak reward model's soft labels of half B: sigmoid(r_a - r_b), one per pair.
    assert len(labels["train_b"]) == results["class_balance"]["train_b"]["rows"]
    assert ((labels["train_b"] > 0) & (labels["train_b"] < 1)).all()
    assert results["config"]["task"]["pairwise"] is True


def test_generative_fine_tuning_runs_on_reward_modelling(make_cfg, tiny_overrides):
    cfg = make_cfg(
        *tiny_overrides, "task=hh_harmless", "method=generative", "task.n_train=32", "task.n_val=8", "task.n_test=16"
    )
    results = pipeline.run(cfg)
    assert {"generative", "weak", "ceiling", "transfer"} <= set(results["stages"])
    assert results["config"]["task"]["pairwise"] is True
