"""One stage across several ranks (``trainer.devices`` > 1). (The threads each process gets:
``threads.py``; a started rank's entry point: ``rank.py``.)

Every rank runs the whole experiment, as Lightning's DDP and FSDP strategies expect and as
Slurm's tasks do: the same stages in the same order, each stage's fit and predict spread over
all ranks. Rank 0 alone publishes cache entries, W&B runs and ``results.json``; the other ranks
build into scratch folders, wait for rank 0 to publish, and read what it published
(``cache.build_once``).

Lightning would start the other ranks by re-running the command line, which under a Hydra
multirun (or pytest, or a notebook) is the wrong program. Here rank 0 starts them as
``python -m w2s_lightning.rank <its resolved config>`` with the environment Lightning's own
launcher sets (LOCAL_RANK, WORLD_SIZE, NODE_RANK, MASTER_ADDR, MASTER_PORT): Lightning then
finds its ranks already there, as under torchrun. Under Slurm (``hydra/launcher=slurm``, one
task per device) the ranks exist already, and nothing is started.

Why it is long: starting, connecting, watching and tearing down ranks is one protocol;
split across modules it would hide the order its steps must run in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from w2s_lightning.errors import ConfigError

log = logging.getLogger(__name__)

# What Lightning's subprocess launcher sets for its ranks; rank 0 sets it for the run's length.
RANK_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")
# Strategies that start their ranks by spawning or forking from inside fit: every rank would
# not run the experiment, and the stage cache would see one process only.
UNSUPPORTED_STRATEGIES = ("spawn", "fork", "notebook")


def devices(cfg: DictConfig) -> int:
    value = cfg.trainer.get("devices", 1)
    if isinstance(value, int) and value >= 1:
        return value
    raise ConfigError(
        f"trainer.devices={value!r}: give a number of devices (1, 2, 8, ...); "
        "a list of ids or 'auto' makes the number of ranks depend on the machine."
    )


def world_size(cfg: DictConfig) -> int:
    """The number of ranks one stage runs on: devices per node times nodes."""
    return devices(cfg) * int(cfg.trainer.get("num_nodes", 1))


def strategy_name(cfg: DictConfig) -> str:
    strategy = cfg.trainer.get("strategy", "auto")
    return str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy)


def shards_states(cfg: DictConfig) -> bool:
    """Whether the strategy shards weights, gradients and optimizer state over the ranks (FSDP)."""
    return "fsdp" in strategy_name(cfg).lower()


def ranks_started_outside() -> bool:
    """Whether something else started this experiment's ranks (Slurm tasks, torchrun, or rank
    0 of this module): then no process starts any."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", 1)) > 1


def check(cfg: DictConfig) -> None:
    """Refuse a multi-device setting this project cannot run, before any training."""
    if world_size(cfg) == 1:
        return
    name = strategy_name(cfg)
    if shards_states(cfg) and cfg.trainer.get("accelerator") != "gpu":
        raise ConfigError(
            f"trainer.strategy={name} shards over GPUs (Lightning's FSDP needs CUDA); on CPUs use trainer.strategy=ddp."
        )
    if name == "auto" or any(word in name.lower() for word in UNSUPPORTED_STRATEGIES):
        raise ConfigError(
            f"trainer.devices={cfg.trainer.devices} with trainer.strategy={name}: set trainer.strategy=ddp "
            "(each rank holds the whole model) or trainer=gpu_fsdp (weights, gradients and optimizer state "
            "sharded over the GPUs). Spawned or forked ranks cannot share the stage cache."
        )
    if (
        cfg.trainer.get("accelerator") == "gpu"
        and torch.cuda.device_count() < devices(cfg)
        and not ranks_started_outside()
    ):
        raise ConfigError(
            f"trainer.devices={devices(cfg)}, but torch sees {torch.cuda.device_count()} GPU(s) here; "
            "set trainer.devices to at most that (CUDA_VISIBLE_DEVICES decides which)."
        )
    if SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", 1)) != world_size(cfg):
        raise ConfigError(
            f"this Slurm job has {os.environ.get('SLURM_NTASKS', 1)} task(s), but trainer.devices x "
            f"trainer.num_nodes = {world_size(cfg)}: Slurm starts the ranks, one task per device. "
            "hydra/launcher=slurm sets tasks_per_node from trainer.devices; set it there."
        )
    if int(cfg.trainer.get("num_nodes", 1)) > 1 and not ranks_started_outside():
        raise ConfigError(
            f"trainer.num_nodes={cfg.trainer.num_nodes}: several nodes need a cluster launcher that "
            "starts one task per device on each, such as hydra/launcher=slurm (python run.py -m ...)."
        )


def rank() -> int:
    """This process's global rank (Lightning's: from the environment, or the process group)."""
    return rank_zero_only.rank or 0


def is_leader() -> bool:
    return rank() == 0


def connected() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def leaders_answer(answer: bool) -> bool:
    """Rank 0's ``answer`` on every rank when the ranks are connected (``ranks``); a single
    process's own answer otherwise."""
    if not connected():
        return answer
    flag = torch.tensor([int(answer)], device=_device())
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def barrier() -> None:
    if connected():
        dist.barrier()


def gather(trainer: pl.Trainer, values: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """Every rank's ``values`` (``counts[r]`` rows on rank r), on every rank, in rank order."""
    if len(counts) == 1:
        return [values]
    padded = values.new_zeros((max(counts), *values.shape[1:]))
    padded[: len(values)] = values
    everyone = trainer.strategy.all_gather(padded.to(trainer.strategy.root_device)).cpu()
    return [everyone[r][:count] for r, count in enumerate(counts)]


class TransformerBlocks:
    """FSDP's wrapping rule (trainer=gpu_fsdp): one shard unit per transformer block, the
    classes each Hugging Face model names as its ``_no_split_modules`` (GPT2Block,
    Qwen2DecoderLayer, BertLayer, ...). FSDP visits a model from the root down, so each
    backbone declares its blocks before they are reached; one instance serves one Trainer."""

    def __init__(self):
        self.blocks: set[str] = set()

    def __call__(self, module: torch.nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        self.blocks.update(getattr(module, "_no_split_modules", None) or ())
        return recurse or type(module).__name__ in self.blocks


# ------------------------------------------------------------------ threads


# ------------------------------------------------------------------ starting the ranks


def float32_masters():
    """FSDP's mixed-precision policy for trainer=gpu_fsdp: parameters, gradient reduction and
    buffers in float32, while Lightning's bf16-mixed autocasts the compute to bf16. Left to
    Lightning, bf16-mixed under FSDP keeps all three in bf16 (its FSDPPrecision), which is not
    trainer=gpu's autocast over float32 master weights: the same run on one GPU or eight would
    train a different algorithm."""
    from torch.distributed.fsdp import MixedPrecision

    return MixedPrecision(param_dtype=torch.float32, reduce_dtype=torch.float32, buffer_dtype=torch.float32)


def where_ranks_meet() -> tuple[str, int, int]:
    """Address, port and this process's global rank, from whoever started the ranks: Slurm
    (Lightning's SLURMEnvironment reads them), torchrun, or ``ranks`` below."""
    if SLURMEnvironment.detect():
        slurm = SLURMEnvironment(auto_requeue=False)
        return slurm.main_address, slurm.main_port, slurm.global_rank()
    return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ.get("RANK", rank()))


def connect(cfg: DictConfig) -> None:
    """Connect the ranks before the first stage, so that every choice rank 0 makes (build a
    stage, or reuse it) reaches the others before they act on it. Lightning finds the
    process group up and uses it (its DDP and FSDP strategies choose the same backends)."""
    address, port, global_rank = where_ranks_meet()
    os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port))
    gpu = cfg.trainer.get("accelerator") == "gpu"
    if gpu:
        torch.cuda.set_device(global_rank % devices(cfg))
    dist.init_process_group("nccl" if gpu else "gloo", rank=global_rank, world_size=world_size(cfg))
    rank_zero_only.rank = global_rank


def start_ranks(cfg: DictConfig, folder: Path, n_threads: int) -> list[subprocess.Popen]:
    """Ranks 1..N-1 of this node, each running ``rank.py`` on rank 0's resolved config."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(find_free_network_port()),
        NODE_RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE=str(devices(cfg)),
        OMP_NUM_THREADS=str(n_threads),
    )
    config_file = folder / "config.yaml"
    config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))  # the ranks have no Hydra to resolve it
    return [
        subprocess.Popen(
            [sys.executable, "-m", "w2s_lightning.rank", str(config_file)], env={**os.environ, "LOCAL_RANK": str(r)}
        )
        for r in range(1, devices(cfg))
    ]


@contextlib.contextmanager
def ranks(cfg: DictConfig, n_threads: int) -> Iterator[None]:
    """Run the body with this experiment's ranks: on one device, as is; on several, connected,
    with ranks 1..N-1 started here (``n_threads`` torch threads each) unless a cluster launcher
    started them. The process group is torn down after, so the next job of a sweep in this
    process starts clean."""
    if world_size(cfg) == 1:
        try:
            yield
        finally:  # trainer.strategy=ddp on one device: Lightning's group of one
            if dist.is_initialized():
                dist.destroy_process_group()
        return
    saved = {name: os.environ.get(name) for name in RANK_ENVIRONMENT}
    with tempfile.TemporaryDirectory(prefix="w2s-ranks-") as folder:
        children = [] if ranks_started_outside() else start_ranks(cfg, Path(folder), n_threads)
        watcher = Watcher(children)
        watcher.start()
        try:
            connect(cfg)
            yield
            for child in children:  # they end with rank 0: the last stage's barrier released them all
                child.wait(timeout=600)
        finally:
            watcher.stop()
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            if dist.is_initialized():
                dist.destroy_process_group()
            rank_zero_only.rank = 0 if children else rank_zero_only.rank
            for name, value in saved.items():
                os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
    failed = [c.returncode for c in children if c.returncode]
    if failed:
        raise RuntimeError(f"rank(s) of this experiment exited with {failed}; their error is printed above.")


class Watcher(threading.Thread):
    """Ends rank 0 when another rank dies: rank 0 would otherwise wait in a collective for the
    process group's timeout (30 minutes). Lightning's own launcher does the same. A rank that
    fails as rank 0 does (a bad setting) gets a few seconds for rank 0 to fail on its own."""

    def __init__(self, children: list[subprocess.Popen]):
        super().__init__(daemon=True, name="w2s-rank-watcher")
        self.children = children
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            dead = [c for c in self.children if c.poll() not in (None, 0)]
            if dead and not self.stopped.wait(5.0):
                print(
                    f"error: rank process {dead[0].pid} exited with {dead[0].returncode}; stopping rank 0 "
                    "(finished stages stay in the cache: rerun to resume).",
                    file=sys.stderr,
                    flush=True,
                )
                for child in self.children:
                    if child.poll() is None:
                        child.kill()
                os.kill(os.getpid(), signal.SIGKILL)

    def stop(self) -> None:
        self.stopped.set()


class OrphanGuard(threading.Thread):
    """Ends a local sweep job (a joblib worker, ``hydra/launcher=local_parallel``) when the sweep's
    process dies: the workers outlive a killed parent and would go on training. On the parent's
    death this process gets SIGTERM, which a training stage answers by saving an in-progress
    checkpoint (resume.py) and ending its job; SIGKILL follows if it is still alive ``grace``
    seconds later."""

    started = False  # one guard per worker process: a worker runs job after job
    fired = threading.Event()  # the parent is gone

    def __init__(self, grace: float = 30.0):
        super().__init__(daemon=True, name="w2s-orphan-guard")
        self.parent, self.grace = os.getppid(), grace

    @classmethod
    @contextlib.contextmanager
    def guarding(cls):
        """Runs a job under the guard. A job that answered the guard's SIGTERM returns to an idle
        worker that no parent will send more work to: the process ends there, instead of waiting
        out the grace for its SIGKILL."""
        if not cls.started:
            cls.started = True
            cls().start()
        try:
            yield
        finally:
            if cls.fired.is_set():
                os._exit(128 + signal.SIGTERM)  # the job's own cleanup has run; the worker's is moot

    def run(self) -> None:
        while os.getppid() == self.parent:
            time.sleep(1.0)
        print(f"error: the sweep's process {self.parent} is gone; ending this job", file=sys.stderr, flush=True)
        self.fired.set()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(self.grace)
        os.kill(os.getpid(), signal.SIGKILL)
