"""No pickle is loaded, no remote code runs unless a model's yaml asks for it, and no secret
reaches results.json, W&B or the report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from w2s_lightning.errors import ModelError
from w2s_lightning.models import load_classifier
from w2s_lightning.redact import REDACTED, redacted

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "src" / "w2s_lightning").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))


def calls(text: str, name: str) -> list[str]:
    """Every call of ``name`` in ``text``, up to its closing parenthesis."""
    found = []
    for match in re.finditer(re.escape(name) + r"\(", text):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        found.append(text[match.start() : end + 1])
    return found


def test_no_source_loads_pickle():
    """torch.load only with weights_only=True, Lightning loads (fit and predict from a
    checkpoint) with weights_only=True, and no pickle, dill or joblib loads anywhere."""
    checked = 0
    for path in SOURCES:
        text = path.read_text()
        for call in calls(text, "torch.load") + [
            c for c in calls(text, ".fit") + calls(text, ".predict") if "ckpt_path=" in c
        ]:
            assert "weights_only=True" in call, (path.name, call)
            checked += 1
        assert not re.search(r"^\s*(import|from)\s+(pickle|dill|cloudpickle|joblib)\b", text, flags=re.M), path.name
    assert checked >= 3  # resume.py's torch.load, runner.py's fit and predict


def remote_code_model(folder: Path, marker: Path) -> Path:
    """A local model whose config names custom code (auto_map) that leaves ``marker`` when it runs."""
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "w2s-remote",
                "auto_map": {"AutoConfig": "custom.RemoteConfig", "AutoModel": "custom.RemoteModel"},
            }
        )
    )
    (folder / "custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('remote code ran')\n"
        "from transformers import PretrainedConfig\n"
        "class RemoteConfig(PretrainedConfig):\n    model_type = 'w2s-remote'\n"
        "class RemoteModel:\n    pass\n"
    )
    return folder


@pytest.mark.parametrize("trust", [False, True])
def test_remote_code_runs_only_where_the_model_yaml_asks_for_it(make_cfg, tiny_overrides, tmp_path, trust):
    marker = tmp_path / "marker"
    folder = remote_code_model(tmp_path / "remote", marker)
    cfg = make_cfg(*tiny_overrides, f"weak.path={folder}", f"weak.trust_remote_code={str(trust).lower()}")
    with pytest.raises(Exception) as raised:
        load_classifier(cfg.weak, cfg.paths.zoo_dir)
    if trust:
        assert marker.exists()  # asked for: transformers ran the folder's code
    else:
        assert not marker.exists() and isinstance(raised.value, ModelError)
        assert "trust_remote_code" in str(raised.value)


def test_secrets_are_redacted_by_name_and_by_value(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-0123456789")
    config = {
        "logger": {"api_key": "anything", "project": "p"},
        "hub": {"token": None},
        "notes": ["uses wandb-secret-0123456789 here"],
        "lr": 1e-5,
    }
    assert redacted(config) == {
        "logger": {"api_key": REDACTED, "project": "p"},
        "hub": {"token": None},
        "notes": [REDACTED],
        "lr": 1e-5,
    }


@pytest.mark.slow
def test_no_secret_reaches_results_wandb_or_the_report(tiny_overrides, tmp_path):
    secret = "hf_s3cr3t-value-that-must-not-leak"
    sweep = tmp_path / "sweep"
    env = {
        **os.environ,
        "W2S_CACHE_DIR": str(tmp_path / "cache"),
        "HF_TOKEN": secret,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    # A secret under a secret's name, and one under an innocent name: both come from the environment.
    run = subprocess.run(
        [
            sys.executable,
            "run.py",
            "-m",
            f"hydra.sweep.dir={sweep}",
            *tiny_overrides,
            "logger.mode=offline",
            "+task.hub_token=${oc.env:HF_TOKEN}",
            "+notes=${oc.env:HF_TOKEN}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = subprocess.run(
        [sys.executable, "run.py", "command=report", f"report.dir={sweep}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    results = json.loads(next(sweep.glob("*/results.json")).read_text())
    assert results["config"]["task"]["hub_token"] == REDACTED and results["config"]["notes"] == REDACTED
    written = [p for p in sweep.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written) and any(p.name == "report.md" for p in written)
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
