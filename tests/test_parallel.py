"""One stage across several processes (parallel.py): Lightning DDP on this CPU for real (gloo,
two ranks), against the same experiment on one device."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
import psutil
import pytest
import torch
from safetensors.torch import load_file

from w2s_lightning import pipeline

ROOT = Path(__file__).resolve().parents[1]

# Two ranks reduce gradients in another order than one device accumulates them, and predict
# rows in other batches (other padding lengths): float32 rounding, ~1e-7 per operation, which
# a few dozen optimizer steps of a tiny model grow to ~1e-5 in P(label=1) (measured: README).
TOLERANCE = 1e-5


def predictions(stage: dict) -> dict:
    return load_file(str(Path(stage["path"]) / "predictions.safetensors"))


@pytest.mark.slow
def test_a_stage_on_two_ddp_ranks_trains_and_predicts_every_row_once_as_one_device_does(
    make_cfg, tiny_overrides, tmp_path
):
    # Batches of 16 in micro-batches of 8: one device accumulates two, each of two ranks one.
    # 52 rows a half: 7 micro-batches (the last of 4), so the last step's one micro-batch does
    # not divide between the ranks (rank 1 runs a stand-in that weighs nothing). The transfer
    # trains with aux_conf: its threshold is one quantile over the step's rows on both ranks.
    # Odd val and test splits: one rank predicts a copy of a row, which must not count.
    overrides = [
        *tiny_overrides,
        "weak.minibatch_size=8",
        "strong.minibatch_size=8",
        "task.n_train=104",
        "task.n_val=15",
        "task.n_test=63",
        "loss=aux_conf",
        "loss.fn.warmup_frac=0",
        "select=weak_val",
    ]  # the transfer keeps its best checkpoint on val
    one = pipeline.run(make_cfg(*overrides, f"paths.output_dir={tmp_path / 'one'}"))
    ddp = make_cfg(
        *overrides,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"paths.output_dir={tmp_path / 'ddp'}",
        "logger.mode=offline",
    )
    two = pipeline.run(ddp)
    worst = 0.0
    for role in ("weak", "ceiling", "transfer"):
        assert two["stages"][role]["key"] != one["stages"][role]["key"]  # devices are in the key
        single, spread = predictions(one["stages"][role]), predictions(two["stages"][role])
        assert spread.keys() == single.keys()
        for split, values in single.items():
            assert spread[split].shape == values.shape  # every row once: none missing, none repeated
            worst = max(worst, float((spread[split] - values).abs().max()))
    assert two["stages"]["transfer"]["selected_step"] == one["stages"]["transfer"]["selected_step"]
    print(
        f"largest difference in P(label=1), two ranks against one device: {worst:.2e}; transfer selected step "
        f"{two['stages']['transfer']['selected_step']}"
    )
    assert worst < TOLERANCE
    # Rank 0 alone published: one entry per stage, no scratch folder of rank 1 left, one results.json,
    # and W&B runs of rank 0 only (one per trained stage and the summary).
    stage_dir = Path(ddp.paths.stage_dir)
    assert not list(stage_dir.glob(".tmp-*"))
    assert (
        json.loads((tmp_path / "ddp" / "results.json").read_text())["stages"]["transfer"]["key"]
        == two["stages"]["transfer"]["key"]
    )
    runs = sorted(p.name for p in (Path(ddp.logger.dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 4, runs


def rank_processes(leader: psutil.Process) -> list[psutil.Process]:
    return [p for p in leader.children(recursive=True) if "w2s_lightning.rank" in " ".join(p.cmdline())]


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["rank 0", "rank 1"])
def test_a_killed_rank_leaves_no_partial_entry_and_the_rerun_completes(tiny_overrides, tmp_path, victim):
    command = [
        sys.executable,
        "run.py",
        f"hydra.run.dir={tmp_path / 'run'}",
        *tiny_overrides,
        "weak.minibatch_size=8",
        "strong.minibatch_size=8",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "logger.mode=disabled",
    ]
    env = {**os.environ, "W2S_CACHE_DIR": str(tmp_path / "cache")}
    stage_dir = tmp_path / "cache" / "stages"
    leader = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(stage_dir.glob(".tmp-*")) and time.time() < deadline:  # a stage is being built
        time.sleep(0.2)
    ranks = rank_processes(psutil.Process(leader.pid))
    assert ranks, "rank 1 was not started"
    (psutil.Process(leader.pid) if victim == "rank 0" else ranks[0]).kill()
    leader.wait(timeout=120)  # rank 0 dies too when rank 1 does (parallel.Watcher)...
    psutil.wait_procs(ranks, timeout=120)  # ...and rank 1 when rank 0 does (its collectives fail)
    assert leader.returncode != 0 and not any(p.is_running() for p in ranks)
    for entry in (p for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith(".tmp-")):
        assert {"spec.json", "metrics.json", "predictions.safetensors"} <= {f.name for f in entry.iterdir()}, entry
    published = {p.name for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith(".tmp-")}

    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {Path(s["path"]).name for s in results["stages"].values() if s["reused"]} == published


def test_fsdp_keeps_float32_parameters_and_reduction_under_bf16_mixed(make_cfg):
    """Issue 24, item 3: Lightning maps bf16-mixed under FSDP to bf16 parameters, reduction and
    buffers; trainer=gpu_fsdp sets the policy itself, as trainer=gpu's autocast over float32."""
    cfg = make_cfg("trainer=gpu_fsdp")
    strategy = hydra.utils.instantiate(cfg.trainer.strategy)
    policy = strategy.mixed_precision_config
    assert (policy.param_dtype, policy.reduce_dtype, policy.buffer_dtype) == (torch.float32,) * 3
    assert cfg.trainer.precision == "bf16-mixed"  # the compute is autocast to bf16
