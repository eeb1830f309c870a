"""run.py from the command line: clear errors for bad input, without a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test starts run.py: about ten seconds of imports apiece
ROOT = Path(__file__).resolve().parents[1]


def run_cli(tmp_path, *overrides: str, wandb_mode: str = "disabled") -> subprocess.CompletedProcess:
    env = {**os.environ, "W2S_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": wandb_mode}
    return subprocess.run(
        [sys.executable, "run.py", f"hydra.run.dir={tmp_path / 'run'}", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# One through the shell; test_bad_input.py checks every group's choices in-process.
@pytest.mark.parametrize("override,choice", [("task=scique", "sciq")])
def test_unknown_names_list_the_choices(tmp_path, override, choice):
    result = run_cli(tmp_path, override)
    assert result.returncode != 0
    assert "Available options" in result.stderr and choice in result.stderr


def test_custom_task_without_a_file_says_what_to_set(tmp_path):
    result = run_cli(tmp_path, "task=custom")
    assert result.returncode == 2
    assert "error: task=custom needs task.path=" in result.stderr and "Traceback" not in result.stderr


def test_broken_config_value_is_named(tmp_path):
    result = run_cli(tmp_path, "strong.pooling=max")
    assert result.returncode == 2
    assert "pooling='max' is unknown" in result.stderr


def test_the_console_shows_stages_and_summary_and_run_log_keeps_everything(tmp_path, tiny_overrides):
    result = run_cli(tmp_path, *tiny_overrides, wandb_mode="offline")
    assert result.returncode == 0, result.stderr[-2000:]
    console = result.stdout + result.stderr
    for line in (
        "plan: 1 job, 3 stages to train",
        "weak: training tiny-bert on ground truth",
        "transfer: training tiny-llama on weak's labels",
        "PGR",
        "wandb sync",
    ):
        assert line in console
    # Third-party lines nobody can act on: Lightning's hardware lines and tips, deprecation
    # warnings, W&B's banners and run summaries, datasets' progress bars.
    for noise in ("GPU available", "litlogger", "LeafSpec", "wandb:", "Run summary", "tokenize", "examples/s]"):
        assert noise not in console
    log = (tmp_path / "run" / "run.log").read_text()
    for line in ("GPU available", "weak: training tiny-bert", "PGR"):
        assert line in log
    # The same run planned again: every stage is in the cache now.
    again = run_cli(tmp_path, "command=plan", *tiny_overrides)
    assert "plan: 1 job, 0 stages to train" in again.stdout and "3 reused from the cache" in again.stdout


def test_a_plan_lists_each_jobs_stages_and_trains_nothing(tmp_path, zoo_dir):
    sweep = ("-m", "task=sciq,boolq", "loss=xent,aux_conf", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    result = run_cli(tmp_path, "command=plan", *sweep, f"paths.zoo_dir={zoo_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    # A weak model and a ceiling per task, shared by both losses, and a transfer per job.
    assert [line for line in lines if line.startswith("plan: ")][0].startswith(
        "plan: 4 jobs, 8 stages to train (about "
    )
    jobs = [line.strip() for line in lines if line.strip().startswith("job ")]
    assert [j.split(":")[0] for j in jobs] == [
        "job 0 (task=sciq loss=xent)",
        "job 1 (task=sciq loss=aux_conf)",
        "job 2 (task=boolq loss=xent)",
        "job 3 (task=boolq loss=aux_conf)",
    ]
    for number, job in enumerate(jobs):
        first = number % 2 == 0
        word = "train" if first else "shared"
        assert f"{word} weak minilm_l3" in job and f"{word} ceiling mpnet_base" in job, job
        assert "train transfer mpnet_base" in job, job
    assert not list((tmp_path / "cache" / "stages").glob("*-*"))  # nothing trained
    # The paper's sizes are hours on a CPU (by the stated default rates, the cache being empty):
    # the plan names the CPU-sized way to try the same sweep.
    assert any(line.startswith("to try it CPU-sized, add +budget=cpu") for line in lines)
