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
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("override,choice", [("task=scique", "sciq"), ("loss=aux", "aux_conf"), ("model@weak=gpt5", "minilm_l3")])
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
    for line in ("weak: training tiny-bert on ground truth", "transfer: training tiny-llama on weak's labels",
                 "PGR", "wandb sync"):
        assert line in console
    # Third-party lines nobody can act on: Lightning's hardware lines and tips, deprecation
    # warnings, W&B's banners and run summaries, datasets' progress bars.
    for noise in ("GPU available", "litlogger", "LeafSpec", "wandb:", "Run summary", "tokenize", "examples/s]"):
        assert noise not in console
    log = (tmp_path / "run" / "run.log").read_text()
    for line in ("GPU available", "weak: training tiny-bert", "PGR"):
        assert line in log
