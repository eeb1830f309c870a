"""One weak-to-strong experiment: check everything first (``preflight.py``), cut the splits,
build the method's recipe of stage requests (``methods.py``) through the stage cache
(``runner.py``), and write the results (``results.py``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from w2s_lightning import config, parallel, plan, tasks, threads, tracking
from w2s_lightning.cache import write_atomically
from w2s_lightning.preflight import preflight
from w2s_lightning.redact import redacted
from w2s_lightning.results import RUN_ONLY_KEYS, Results
from w2s_lightning.runner import StageRunner

log = logging.getLogger(__name__)


def skip(cfg: DictConfig, output_dir: Path, reason: str) -> dict:
    """A ladder sweep is the product weak x strong: the pairs it does not study are recorded
    (the report counts them) and left untrained."""
    log.warning("skipping %s -> %s: %s", cfg.weak.name, cfg.strong.name, reason)
    skipped = {
        "task": cfg.task.name,
        "weak_model": cfg.weak.name,
        "strong_model": cfg.strong.name,
        "loss": cfg.loss.name,
        "seed": cfg.seed,
        "skipped": reason,
    }
    write_atomically(output_dir / "skipped.json", json.dumps(skipped, indent=2))
    return skipped


def results_of_same_config(cfg: DictConfig, path: Path) -> dict | None:
    """The record at ``path`` when it holds the results of this same config (settings of
    ``RUN_ONLY_KEYS`` aside, and null settings, which are the same as absent: a field the schema
    gains at null keeps old results), else None: with ``reuse_results``, such a job trains nothing."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())

    def set_only(node):
        if isinstance(node, dict):
            return {k: set_only(v) for k, v in node.items() if v is not None}
        return [set_only(v) for v in node] if isinstance(node, list) else node

    def settings(config: dict) -> dict:
        return set_only({k: v for k, v in config.items() if k not in RUN_ONLY_KEYS})

    current = redacted(OmegaConf.to_container(cfg, resolve=True))
    if settings(record.get("config", {})) != settings(current):
        log.warning("%s holds results of another config: this job runs again and replaces them", path)
        return None
    return record


def run(cfg: DictConfig) -> dict:
    """Run the experiment ``cfg`` describes; write ``results.json`` and return its record (or,
    for a pair a ladder sweep skips, the reason)."""
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    if cfg.reuse_results and (finished := results_of_same_config(cfg, output_dir / "results.json")):
        log.info("%s already holds this job's results (reuse_results=true): nothing to train", output_dir)
        return finished
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them

    requests, reason = preflight(cfg, output_dir, sweep=config.in_ladder_sweep())
    if reason:
        plan.log_start(cfg)
        plan.log_done(0, 0)
        return skip(cfg, output_dir, reason)

    splits = tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)
    runner = StageRunner(cfg, splits)
    if parallel.is_leader():
        plan.log_start(cfg, runner, requests)

    with parallel.ranks(cfg, threads.use(cfg)):
        stages = runner.run(requests)
    if not parallel.is_leader():  # rank 0 writes the results; this rank's stages were its share
        return {}

    results = Results(
        task=cfg.task.name,
        weak_model=cfg.weak.name,
        strong_model=cfg.strong.name,
        loss=cfg.loss.name,
        method=cfg.method.name,
        seed=cfg.seed,
        n_test=len(splits["test"]),
        stages=stages,
        config=redacted(OmegaConf.to_container(cfg, resolve=True)),
        class_balance=tasks.class_balance(splits),
        wall_seconds=time.time() - started,
    )
    path = output_dir / "results.json"
    results.write(path)
    tracking.log_summary(cfg, results.wandb_summary())  # also what `report.wandb_group=...` reads back
    # Logged, not printed: the summary also lands in the run folder's run.log.
    log.info("experiment finished\n\n%s", "\n".join(filter(None, [results.console(path), tracking.where(cfg)])))
    plan.log_done(sum(not s.reused for s in stages.values()), sum(s.reused for s in stages.values()))
    return results.to_dict()
