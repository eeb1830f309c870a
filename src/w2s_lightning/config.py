"""What conf/ needs from Python, registered on import: the model and task schemas and the
resolvers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import MISSING, OmegaConf


@dataclass
class ModelConfig:
    """What every ``conf/model/*.yaml`` holds. Each file starts from this schema (``defaults:
    [model_schema, _self_]``) and sets only what differs; Hydra refuses a missing key, an
    unknown one, or a value of the wrong type when the config is composed."""

    name: str = MISSING
    path: str = MISSING  # zoo:<name>, a local Hugging Face folder, or a hub id
    revision: str | None = None  # a hub id's commit, tag or branch (null: its newest); in the stage key
    family: str = MISSING  # ladders pair models of one family (ladder.cross_family)
    params: float = MISSING  # parameter count: the model's size in ladders
    pooling: str = MISSING  # last (decoders), mean or first (encoders)
    # Which hidden state is pooled: null = the backbone's output (last_hidden_state, after a
    # decoder's final norm); i = hidden_states[i] (0 = the embeddings, 1..L the layers, -1 the last).
    hidden_layer: int | None = None
    objective: str = MISSING  # generative fine-tuning's objective: causal_lm or masked_lm
    lr: float = 5e-5
    epochs: int | None = None  # passes over its training rows; null = train.epochs (a model from scratch needs more)
    minibatch_size: int = 32  # micro-batch; train.batch_size / minibatch_size = gradient accumulation
    eval_batch_size: int = 64
    # Cut by padded tokens instead (rows x the batch's longest row): each optimizer step's rows
    # sorted by length and cut into micro-batches of at most minibatch_tokens (the steps stay
    # train.batch_size rows); prediction batches of at most eval_batch_tokens. null = by rows.
    minibatch_tokens: int | None = None
    eval_batch_tokens: int | None = None
    max_length: int = 1024  # longer texts are cut on the left (the question/answer sits at the end)
    image_size: int | None = None  # an image model (vision.py): the side images are resized to; null = a text model
    dtype: str | None = None  # null = float32 weights (mixed precision comes from trainer.precision)
    attn_implementation: str | None = (
        None  # null = transformers' choice (sdpa where the model has it); eager, flash_attention_2
    )
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    about: str | None = None  # what the report says of the model (an instruct tune, a licence); not in stage keys


ConfigStore.instance().store(group="model", name="model_schema", node=ModelConfig)


@dataclass
class TaskConfig:
    """What every ``conf/task/*.yaml`` holds (``defaults: [task_schema, _self_]``): where the
    rows live, which formatter makes them binary, and the sizes. A task file sets only what
    differs; sizes default to the paper's and are set by presets and ``budget``."""

    name: str = MISSING
    formatter: str = MISSING  # a name registered in formatters.py
    about: str | None = None  # what docs and the report say of the task (a substitute, a licence); not in stage keys
    hub_path: str | None = None
    hub_name: str | None = None  # the hub dataset's config
    hub_data_dirs: list[str] = field(default_factory=list)  # subsets loaded and joined (hh-rlhf's helpful-base, ...)
    # Split names of the local files <data_dir>/<name>/<split>.jsonl; the hub's where they differ.
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    hub_splits: dict[str, str] = field(default_factory=dict)
    # Local files (<data_dir>-relative, without suffix) that together form one labelled pool,
    # cut into train and test by split_seed; in place of `splits` when the data is local.
    local_files: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # raw columns the formatter reads: checked before any stage
    pairwise: bool = False  # rows are pairs (text, text_b) that a reward model scores one by one
    balance: bool = False  # undersample the majority class (seeded), as the paper's binary tasks are balanced
    n_train: int = 20000  # the pool cut into halves A and B (the paper's 20k)
    n_val: int = 500  # carved from the pool before halving (ground truth, for monitoring)
    n_test: int = 10000
    split_seed: int = 0  # fixes the test set (and any cut of a single source) across experiment seeds
    # Source rows kept where each named column lies in [low, high] (chess: {Rating: [1500, 2000]}).
    ranges: dict[str, list[float]] | None = None
    # formatter=template (task=custom) only: a local file and how its columns make a text and a label.
    path: str | None = None
    test_path: str | None = None
    text_template: str | None = None
    label_column: str | None = None
    # An image task (vision.py): a folder of idx files, and the classes that make label 1 and label 0.
    image_dir: str | None = None
    positive_classes: list[int] | None = None
    negative_classes: list[int] | None = None


ConfigStore.instance().store(group="task", name="task_schema", node=TaskConfig)


def default_data_dir() -> str | None:
    """$W2S_DATA_DIR, else the first ../shared/data that exists (beside the working
    directory or beside this checkout), else None: tasks then load from the hub."""
    if os.environ.get("W2S_DATA_DIR"):
        return os.environ["W2S_DATA_DIR"]
    checkout = Path(__file__).resolve().parents[2]
    for candidate in (Path.cwd().parent / "shared" / "data", checkout.parent / "shared" / "data"):
        if candidate.is_dir():
            return str(candidate.resolve())
    return None


def cpu_precision(cpuinfo: str | None = None) -> str:
    """bf16 autocast on CPUs with native bf16 matrix units (AMX, AVX512-BF16), where it runs
    several times faster than fp32; full fp32 elsewhere, where bf16 is emulated and slower.
    ``cpuinfo``: the text of /proc/cpuinfo (read here when not given)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "32-true"
    flags = set(cpuinfo.split())
    return "bf16-mixed" if flags & {"amx_bf16", "avx512_bf16"} else "32-true"


def in_ladder_sweep() -> bool:
    """Whether this is a job of a Hydra multirun that sweeps models (``model@weak=...`` or
    ``model@strong=...`` among the job's overrides, from the command line or a preset's
    sweeper params). False for a single run, a sweep over tasks or losses, or outside Hydra."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return False
    return hydra_cfg.mode == RunMode.MULTIRUN and any(o.startswith("model@") for o in hydra_cfg.overrides.task)


def sweep_name() -> str:
    """The W&B group of this job: ``sweep-<multirun folder>`` for every job of a multirun,
    ``run-<run folder>`` for a single run, ``interactive`` outside a Hydra app."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return "interactive"
    output_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"sweep-{output_dir.parent.name}"  # jobs are <sweep dir>/<job number>
    return f"run-{output_dir.name}"


OmegaConf.register_new_resolver("w2s_data_dir", default_data_dir, replace=True)
OmegaConf.register_new_resolver("w2s_cpu_precision", cpu_precision, replace=True)
OmegaConf.register_new_resolver("w2s_sweep_name", sweep_name, replace=True)
