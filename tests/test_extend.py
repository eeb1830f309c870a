"""A new method is one function and one yaml: a toy that trains the transfer on the weak
model's labels reversed, written into a temporary folder, runs through `python run.py` with no
file of this repository changed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

TOY_MODULE = '''
from dataclasses import replace

from w2s_lightning import methods
from w2s_lightning.methods import LABELLER, StageRequest


def flip(inputs):
    """A relabelling rule: every soft label p becomes 1 - p."""
    return {split: 1 - p for split, p in inputs.labels.items()}


def reversed_weak_labels(cfg, init=None):
    weak, ceiling, transfer = methods.direct(cfg, init)
    flipped = StageRequest("weak_flipped", supervisor="weak", kind="relabel", predicts=LABELLER,
                           options={"rule": {"_target_": "toy_methods.flip"}})
    return [weak, flipped, ceiling, replace(transfer, supervisor="weak_flipped")]
'''
TOY_YAML = "name: reversed\nfn: toy_methods.reversed_weak_labels\n"


def test_a_method_added_as_one_function_and_one_yaml_runs_through_run_py(tmp_path, tiny_overrides):
    (tmp_path / "toy_methods.py").write_text(TOY_MODULE)
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "reversed.yaml").write_text(TOY_YAML)
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "W2S_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_MODE": "disabled",
    }
    done = subprocess.run(
        [
            sys.executable,
            "run.py",
            "method=reversed",
            f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
            f"hydra.run.dir={tmp_path / 'run'}",
            *tiny_overrides,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    stages = results["stages"]
    assert results["method"] == "reversed" and set(stages) == {"weak", "weak_flipped", "ceiling", "transfer"}
    # The flipped labels are the weak model's mirror image, and the transfer learned from them.
    assert stages["weak_flipped"]["acc"] == pytest.approx(1 - stages["weak"]["acc"])
    spec = json.loads((Path(stages["transfer"]["path"]) / "spec.json").read_text())
    assert spec["labels"] == stages["weak_flipped"]["key"]
    assert "weak_flipped" in done.stdout and "PGR" in done.stdout
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before  # nothing in the repository was touched
