"""A stage killed part-way resumes from its in-progress checkpoint (resume.py), in a real
subprocess, and ends where an uninterrupted run ends."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from w2s_lightning import pipeline
from w2s_lightning.faults import KILL_AT

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# 250 rows a half in micro-batches of 8, 2 epochs: 64 optimizer steps per stage, long enough
# to stop one part-way. Resuming restores weights, AdamW, the schedule and the training order
# exactly, and the same float32 operations run in the same order on the same machine: the
# predictions come out bitwise equal (measured); the tolerance only allows for another BLAS.
LONGER = [
    "task.n_train=500",
    "train.batch_size=8",
    "weak.minibatch_size=8",
    "strong.minibatch_size=8",
    "train.epochs=2",
    "logger.mode=disabled",
]
TOLERANCE = 1e-6


def stage_predictions(results: dict) -> dict:
    return {role: load_file(str(Path(s["path"]) / "predictions.safetensors")) for role, s in results["stages"].items()}


# SIGKILL after the periodic checkpoint of step 20 (at step 22: nothing saved since); SIGTERM at
# step 25, which saves its progress on the way out.
@pytest.mark.parametrize(
    "signal_name, every, failpoint", [("SIGKILL", 20, "train_step:22"), ("SIGTERM", None, "train_step:25:SIGTERM")]
)
def test_a_stage_stopped_mid_training_resumes_and_ends_as_an_uninterrupted_one(
    make_cfg, tiny_overrides, tmp_path, signal_name, every, failpoint
):
    overrides = [*tiny_overrides, *LONGER, f"train.checkpoint_every={every or 'null'}"]
    uninterrupted = pipeline.run(make_cfg(*overrides, f"paths.cache_dir={tmp_path / 'one_go'}"))

    cache = tmp_path / "stopped"
    command = [
        sys.executable,
        "run.py",
        f"hydra.run.dir={tmp_path / 'run'}",
        *overrides,
        f"paths.cache_dir={cache}",
        f"paths.zoo_dir={tmp_path / 'zoo'}",
    ]
    progress = cache / "stages" / ".resume"
    # The signal arrives mid-training of the weak stage, at a step the failpoint names.
    first = subprocess.run(command, cwd=ROOT, env={**os.environ, KILL_AT: failpoint}, capture_output=True, text=True)
    output = first.stdout + first.stderr
    assert first.returncode == (-signal.SIGKILL if every else 128 + signal.SIGTERM), output[-3000:]
    (checkpoint,) = progress.glob("gt-*/resume.ckpt")
    stopped_at = torch.load(checkpoint, weights_only=True)["global_step"]
    assert stopped_at == (20 if every else 25)
    if not every:
        assert "stopped by SIGTERM at optimizer step" in output and "rerun to resume" in output

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (tmp_path / "run" / "run.log").read_text()
    resumed = re.search(r"resuming from \S+ at optimizer step (\d+)", log)
    assert resumed and int(resumed.group(1)) == stopped_at  # the step counter goes on from there
    assert not progress.exists() or not list(progress.iterdir())  # removed once the stages are published
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["stages"]["weak"]["selected_step"] == uninterrupted["stages"]["weak"]["selected_step"] == 64
    worst = 0.0
    for role, splits in stage_predictions(uninterrupted).items():
        for split, values in splits.items():
            worst = max(worst, (stage_predictions(results)[role][split] - values).abs().max().item())
    print(f"{signal_name}: stopped at step {stopped_at} of 64; largest difference in P(label=1): {worst:.2e}")
    assert worst <= TOLERANCE
    assert results["stages"]["transfer"]["acc"] == pytest.approx(uninterrupted["stages"]["transfer"]["acc"], abs=1e-9)


def test_a_resume_checkpoint_that_needs_pickle_is_never_loaded(make_cfg, tiny_overrides, tmp_path, caplog):
    """A resume.ckpt that would run code when unpickled (a tampered or foreign file) is refused by
    weights_only loading: the stage starts over and the code never runs."""
    cfg = make_cfg(*tiny_overrides)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    results = pipeline.run(cfg)  # learn the weak stage's key, then plant the file where its rerun looks
    weak = Path(results["stages"]["weak"]["path"])
    folder = weak.parent / ".resume" / weak.name
    folder.mkdir(parents=True)
    torch.save({"global_step": 1, "epoch": 0, "payload": Payload()}, folder / "resume.ckpt")
    shutil.rmtree(weak)
    again = pipeline.run(make_cfg(*tiny_overrides))
    assert not marker.exists()
    assert "cannot be loaded safely" in caplog.text
    assert again["stages"]["weak"]["acc"] == results["stages"]["weak"]["acc"]
