"""Fault injection: a tiny experiment in a real subprocess, killed with SIGKILL at a failpoint
(faults.py): mid-tokenisation, mid-training, mid-prediction and while publishing an entry.
Every rerun completes, trains none of the stages finished before the kill, and ends with the
results of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from w2s_lightning import pipeline
from w2s_lightning.cache import damage
from w2s_lightning.faults import KILL_AT

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ROLES = ("weak", "ceiling", "transfer")


def predictions(stage: dict) -> dict:
    return load_file(str(Path(stage["path"]) / "predictions.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_overrides, zoo_dir):
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir

    root = tmp_path_factory.mktemp("uninterrupted")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"paths.output_dir={root / 'run'}",
                f"paths.cache_dir={root / 'cache'}",
                f"paths.zoo_dir={zoo_dir}",
                "logger.mode=disabled",
                *tiny_overrides,
            ],
        )
    return pipeline.run(cfg)


# (failpoint, where it lands in the tiny experiment: 3 steps and 3 predicted batches a stage)
@pytest.mark.parametrize("failpoint", ["tokenise:2", "train_step:5", "predict_batch:4", "publish:3"])
def test_a_run_killed_at_any_point_reruns_to_the_uninterrupted_results(
    tiny_overrides, tmp_path, uninterrupted, failpoint
):
    env = {
        **os.environ,
        "W2S_CACHE_DIR": str(tmp_path / "cache"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "WANDB_MODE": "disabled",
    }
    command = [sys.executable, "run.py", *tiny_overrides, "logger.mode=disabled"]
    killed = subprocess.run(
        [*command, f"hydra.run.dir={tmp_path / 'killed'}"],
        cwd=ROOT,
        env={**env, KILL_AT: failpoint},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stage_dir = tmp_path / "cache" / "stages"
    published = (
        {p.name for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
        if stage_dir.exists()
        else set()
    )
    for name in published:
        assert damage(stage_dir / name) is None  # whole, as its manifest says
    if failpoint.startswith(("train_step", "predict_batch", "publish")):
        assert published  # the weak stage (and for publish:3 the ceiling too) had finished

    rerun = subprocess.run(
        [*command, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    reused = {Path(s["path"]).name for s in results["stages"].values() if s["reused"]}
    assert reused == published  # nothing finished was trained again, nothing else was taken as finished
    log = (tmp_path / "run" / "run.log").read_text()
    for role, stage in results["stages"].items():
        assert (f"{role}: reusing" in log) == stage["reused"] and (f"{role}: training" in log) != stage["reused"]
    for role in ROLES:
        assert results["stages"][role]["acc"] == uninterrupted["stages"][role]["acc"]
        for split, values in predictions(uninterrupted["stages"][role]).items():
            assert predictions(results["stages"][role])[split].equal(values), (role, split)
    assert results["pgr"] == pytest.approx(uninterrupted["pgr"], nan_ok=True)
