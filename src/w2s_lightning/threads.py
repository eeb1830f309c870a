"""The torch threads of one process: cores shared among the sweep jobs and ranks of a machine.

torch takes one thread per core in every process, so two processes side by side on two cores
run four threads and slow each other down several-fold.
"""

from __future__ import annotations

import logging
import os

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from w2s_lightning.parallel import devices, ranks_started_outside

log = logging.getLogger(__name__)


def launcher() -> DictConfig:
    """The Hydra launcher's settings of this job ({} outside a Hydra app)."""
    try:
        return HydraConfig.get().launcher
    except ValueError:
        return OmegaConf.create({})


def threads(cfg: DictConfig) -> int:
    """Threads for this process's torch work: ``threads`` when set; else what the job was given
    (OMP_NUM_THREADS, or a submitit job's cpus_per_task); else the machine's cores shared among
    the local sweep jobs (joblib's n_jobs) and this job's local ranks. torch would take one per
    core in every process, and processes side by side then slow each other down several-fold."""
    if cfg.get("threads"):
        return int(cfg.threads)
    given = (
        os.environ.get("OMP_NUM_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK") or launcher().get("cpus_per_task")
    )
    if given:
        return int(given)
    cores = os.cpu_count() or 1
    n_jobs = launcher().get("n_jobs") or 1
    jobs = cores if n_jobs < 1 else n_jobs  # joblib: -1 is one job per core
    ranks_here = 1 if ranks_started_outside() else devices(cfg)
    return max(1, cores // (jobs * ranks_here))


def use(cfg: DictConfig) -> int:
    """Give this process's torch its threads (``threads``), say so, and return how many."""
    n_threads = threads(cfg)
    torch.set_num_threads(n_threads)
    log.info("torch threads: %d in this process (%d cores on this machine)", n_threads, os.cpu_count() or 1)
    return n_threads
