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
# About 128 rows a half in steps of 16 rows, micro-batches of 8 (each step accumulates two),
# 2 epochs: 8 optimizer steps an epoch, 16 a stage, long enough to stop one part-way. Dropout
# is on, so the random generators must resume too. Resuming restores weights, AdamW, the
# schedule, the training order and the generators exactly, and the same float32 operations run
# in the same order on the same machine: the predictions come out bitwise equal (measured);
# the tolerance only allows for another BLAS.
LONGER = [
    "train.batch_size=16",
    "weak.minibatch_size=8",
    "strong.minibatch_size=8",
    "train.epochs=2",
    "train.dropout=true",
    "logger.mode=disabled",
]
TOLERANCE = 1e-6
STEPS = 16
UNINTERRUPTED: dict[tuple, dict] = {}


def stage_predictions(results: dict) -> dict:
    """Each stage's predictions (a generative stage has none: its weights are what it makes)."""
    files = {role: Path(s["path"]) / "predictions.safetensors" for role, s in results["stages"].items()}
    return {role: load_file(str(f)) for role, f in files.items() if f.exists()}


# The failpoint counts micro-batches. SIGKILL at micro-batch 23 (step 12), after the periodic
# checkpoint of step 10: nothing saved since (126 rows a half: the epoch's last micro-batch has
# 6 rows). SIGTERM at micro-batch 15, the first of step 8, the first epoch's last: the step
# ends, its progress is saved on the way out, and the rerun starts the second epoch in the
# order an uninterrupted run draws (128 rows a half, which divide into micro-batches). Rows
# that do not divide, at any step of any epoch: tests/test_data.py, on the sampler itself.
@pytest.mark.parametrize(
    "signal_name, every, failpoint, stopped_at, rows",
    [
        ("SIGKILL", 10, "train_step:23", 10, 252),
        ("SIGTERM", None, "train_step:15:SIGTERM", 8, 256),
    ],
    ids=["sigkill", "sigterm-mid-step-at-epoch-end"],
)
def test_a_stage_stopped_mid_training_resumes_and_ends_as_an_uninterrupted_one(
    make_cfg, tiny_overrides, tmp_path, signal_name, every, failpoint, stopped_at, rows
):
    overrides = [*tiny_overrides, *LONGER, f"task.n_train={rows}", f"train.checkpoint_every={every or 'null'}"]
    # The signal arrives mid-training of the weak stage, at a micro-batch the failpoint names.
    results, uninterrupted = stopped_and_rerun(make_cfg, tmp_path, overrides, failpoint, "gt", stopped_at)
    assert results["stages"]["weak"]["selected_step"] == uninterrupted["stages"]["weak"]["selected_step"] == STEPS


def test_generative_finetuning_stopped_part_way_resumes(make_cfg, tiny_overrides, tmp_path):
    # 96 texts in steps of 16, micro-batches of 8: 6 steps. SIGTERM at micro-batch 7 (the
    # generative stage is the first to train), the first of step 4: saved after step 4. The
    # ceiling and the transfer start from its weights: their predictions show whether it resumed
    # exactly (dropout on, so its generators too).
    overrides = [*tiny_overrides, "method=generative", "strong.minibatch_size=8", "train.dropout=true"]
    results, _ = stopped_and_rerun(make_cfg, tmp_path, overrides, "train_step:7:SIGTERM", "generative", 4)
    assert set(results["stages"]) == {"weak", "generative", "ceiling", "transfer"}


def stopped_and_rerun(make_cfg, tmp_path, overrides, failpoint, kind, stopped_at) -> tuple[dict, dict]:
    """Run ``overrides`` through run.py stopped by ``failpoint`` in a stage of ``kind``, which
    must have saved its progress at optimizer step ``stopped_at``; rerun it; check that the
    rerun resumed there and predicts what an uninterrupted run does. Both runs' results."""
    # One uninterrupted run per setting, shared by the tests that stop it (checkpoints change nothing).
    settings = tuple(o for o in overrides if not o.startswith("train.checkpoint_every="))
    if settings not in UNINTERRUPTED:
        UNINTERRUPTED[settings] = pipeline.run(make_cfg(*overrides, f"paths.cache_dir={tmp_path / 'one_go'}"))
    uninterrupted = UNINTERRUPTED[settings]
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
    first = subprocess.run(command, cwd=ROOT, env={**os.environ, KILL_AT: failpoint}, capture_output=True, text=True)
    output = first.stdout + first.stderr
    killed = failpoint.count(":") == 1
    assert first.returncode == (-signal.SIGKILL if killed else 128 + signal.SIGTERM), output[-3000:]
    (checkpoint,) = progress.glob(f"{kind}-*/resume.ckpt")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == stopped_at
    if not killed:
        assert "stopped by SIGTERM at optimizer step" in output and "rerun to resume" in output

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (tmp_path / "run" / "run.log").read_text()
    resumed = re.search(r"resuming from \S+ at optimizer step (\d+)", log)
    assert resumed and int(resumed.group(1)) == stopped_at  # the step counter goes on from there
    assert not progress.exists() or not list(progress.iterdir())  # removed once the stages are published
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    worst = 0.0
    for role, splits in stage_predictions(uninterrupted).items():
        for split, values in splits.items():
            worst = max(worst, (stage_predictions(results)[role][split] - values).abs().max().item())
    print(f"{failpoint}: stopped at step {stopped_at}; largest difference in P(label=1): {worst:.2e}")
    assert worst <= TOLERANCE
    assert results["stages"]["transfer"]["acc"] == pytest.approx(uninterrupted["stages"]["transfer"]["acc"], abs=1e-9)
    return results, uninterrupted


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
