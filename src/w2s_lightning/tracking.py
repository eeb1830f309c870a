"""Weights & Biases, the one module that calls it: one run per trained stage plus a summary run,
grouped per experiment; the report's run; reading a group's summaries back for the report.

``logger.mode=auto`` logs online when an API key is configured (WANDB_API_KEY or a
netrc entry from ``wandb login``) and offline otherwise; ``wandb sync`` uploads offline
runs later. ``logger.mode=disabled`` turns W&B off.
"""

from __future__ import annotations

import contextlib
import netrc
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import wandb
from omegaconf import DictConfig, OmegaConf

from w2s_lightning.errors import ConfigError
from w2s_lightning.redact import redacted
from w2s_lightning.results import Results

if TYPE_CHECKING:  # Lightning is imported where a stage logs, not by the report (seconds of imports)
    from lightning.pytorch.loggers import WandbLogger


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        has_login = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        has_login = False
    return "online" if has_login else "offline"


def enabled(cfg: DictConfig) -> bool:
    return resolve_mode(cfg.logger.mode) != "disabled"


def _run_kwargs(cfg: DictConfig, job_type: str, name: str) -> dict[str, Any]:
    os.makedirs(cfg.logger.dir, exist_ok=True)
    return dict(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group,
        job_type=job_type,
        name=name,
        tags=list(cfg.logger.tags),
        mode=resolve_mode(cfg.logger.mode),
        dir=cfg.logger.dir,
        config=redacted(OmegaConf.to_container(cfg, resolve=True)),  # no API keys or tokens in W&B
        reinit="finish_previous",
    )


def stage_logger(cfg: DictConfig, role: str, model_name: str) -> WandbLogger | bool:
    """A Lightning logger for one stage's training, or False when W&B is disabled."""
    if not enabled(cfg):
        return False
    kwargs = _run_kwargs(cfg, role, f"{cfg.logger.experiment}/{role}-{model_name}")
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(save_dir=kwargs.pop("dir"), **kwargs)


@contextlib.contextmanager
def finished_when_done(logger: WandbLogger | bool) -> Iterator[None]:
    """Close a stage's W&B run when the stage ends: finished, or failed if it raised."""
    exit_code = 1
    try:
        yield
        exit_code = 0
    finally:
        if logger:
            logger.experiment.finish(exit_code=exit_code)


def where(cfg: DictConfig) -> str | None:
    """One line for the console: where this run's W&B runs went, and how to upload offline ones."""
    mode = resolve_mode(cfg.logger.mode)
    if mode == "disabled":
        return None
    if mode == "offline":
        where = f"{cfg.logger.dir}/wandb"
        return f"W&B runs (offline) in {where}; upload with: wandb sync {where}/offline-run-*"
    return f"W&B runs online in project {cfg.logger.project}, group {cfg.logger.group}"


def log_summary(cfg: DictConfig, summary: dict[str, float]) -> None:
    """The experiment's headline numbers (stage accuracies, PGR) in one run of the group."""
    if not enabled(cfg):
        return
    import wandb  # here, not at the top: runs that log nothing to W&B never import it

    run = wandb.init(**_run_kwargs(cfg, "summary", f"{cfg.logger.experiment}/summary"))
    run.log(summary)
    run.summary.update(summary)
    run.finish()


def read_summaries(project: str, entity: str | None, group: str) -> list[dict]:
    """The summary runs of one W&B group, in the shape of ``results.json``."""
    path = f"{entity}/{project}" if entity else project
    runs = wandb.Api().runs(path, filters={"group": group, "jobType": "summary"})
    results = []
    for run in runs:
        summary = dict(run.summary)
        if "n_test" not in summary:  # the noise rule needs it; runs before it was logged lack it
            raise ConfigError(
                f"W&B run {run.name} has no n_test in its summary (it predates the noise rule); "
                "report its sweep from the results.json files: report.dir=<multirun folder>."
            )
        results.append(Results.from_wandb(summary, dict(run.config)).to_dict())
    if not results:
        raise ConfigError(
            f"W&B has no summary runs in group {group!r} of project {path!r}; check the name "
            "on the dashboard (groups are sweep-<multirun folder>)."
        )
    return results


def log_report(report: dict, results: list[dict], mode: str) -> None:
    """The report's tables and figures as one ``job_type=report`` run in the sweep's group."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return
    logger_cfg = results[0]["config"]["logger"]
    run = wandb.init(
        project=logger_cfg["project"],
        entity=logger_cfg["entity"],
        group=logger_cfg["group"],
        job_type="report",
        name=f"{logger_cfg['group']}/report",
        mode=mode,
        dir=str(report["out_dir"]),
        reinit="finish_previous",
    )
    run.log(
        {
            **{
                f"report/{name}": wandb.Table(dataframe=report[name])
                for name in ("summary", "pairs", "across_tasks", "tests", "differences")
                if not report[name].empty
            },
            **{f"report/{f.stem}": wandb.Image(str(f)) for f in report["figures"]},
        }
    )
    run.summary.update(report["accounting"])
    run.finish()


def silence() -> None:
    """W&B's banners, warnings and run summaries go to <run folder>/wandb/debug*.log instead."""
    wandb.setup(wandb.Settings(silent=True))
