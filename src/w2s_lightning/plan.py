"""The plan of a run or a sweep, before anything trains: every job's stages, whether each is
trained or reused from the stage cache, and about how long the training takes on this machine.

A stage's estimate counts the tokens it computes (its rows' tokens x epochs, the validation
passes, the splits it predicts) and divides them by the model's throughput here: the median of
the same model's stages in the cache at the same device and precision (``speed.Throughput``
wrote their figures), else the FLOP rate of the other models' stages there, else a stated
default per device and precision. ``docs/measurements.md`` compares estimates with the clock.

Why it is long: a plan is the sweep's jobs (as Hydra splits them), each job's cache
entries (as the runner keys them) and their estimates, computed together so that an entry
an earlier job trains is counted once.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from w2s_lightning import tasks
from w2s_lightning.errors import W2SError
from w2s_lightning.methods import StageRequest, epochs_of, finetune_of
from w2s_lightning.preflight import preflight
from w2s_lightning.runner import StageRunner
from w2s_lightning.stage_key import task_settings

log = logging.getLogger(__name__)

# FLOPs per token and parameter: forward and backward to train, forward to predict.
FLOPS_PER_TOKEN = {"train": 6, "predict": 2}
# Effective FLOP/s (train, predict) where the cache has no stage at this device and precision.
# CPU: mpnet_base's stages on 2-core AMD EPYCs, with bf16 units and without; GPU: gpt2-medium
# at micro-batch 16 on one H200, a low bound (docs/measurements.md, docs/speed.md).
DEFAULT_FLOPS = {
    ("cpu", "bf16-mixed"): {"train": 3.4e11, "predict": 3.7e11},
    ("cpu", "32-true"): {"train": 1.25e11, "predict": 1.3e11},
    ("gpu", "bf16-mixed"): {"train": 8.5e12, "predict": 2.3e13},
}
STAGE_OVERHEAD_S = 10  # loading the model, the Trainer's set-up, the stage's W&B run
PROBE_HEAD_S = 5  # a linear head on cached features
LONG_ON_CPU_S = 30 * 60  # past this on a CPU, the plan names the CPU-sized way to try it
TOKEN_COLUMNS = ("input_ids", "input_ids_b")  # a pair's two texts both cost tokens
CPU_SIZED = "+budget=cpu"


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return "<1 min"
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


@dataclass
class PlannedStage:
    role: str
    model: str
    entry: str  # the cache folder it is (or will be) stored in
    status: str  # train | cached | shared (an earlier job of the sweep trains it)
    seconds: float = 0.0  # the estimate, for a stage to train


@dataclass
class JobPlan:
    number: int
    overrides: list[str]  # what sets this job apart from the sweep's others
    stages: list[PlannedStage] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None  # the error the job will stop with

    @property
    def to_train(self) -> list[PlannedStage]:
        return [s for s in self.stages if s.status == "train"]

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.to_train)

    def line(self) -> str:
        head = f"job {self.number} ({' '.join(self.overrides) or 'no overrides'})"
        if self.skipped:
            return f"{head}: skipped, {self.skipped}"
        if self.error:
            return f"{head}: will stop: {self.error}"
        parts = [
            f"{s.status} {s.role} {s.model}" + (f" (~{duration(s.seconds)})" if s.status == "train" else "")
            for s in self.stages
        ]
        return f"{head}: " + ", ".join(parts)


class Speeds:
    """Tokens per second of a model here, from the figures of the stages in the cache."""

    def __init__(self, stage_dir: str, device: tuple[str, str]):
        self.device = device
        self.figures: dict[str, list[tuple[float, float, float]]] = {}  # model -> (params, train, predict)
        for spec_file in sorted(Path(stage_dir).glob("*/spec.json")):
            try:
                spec = json.loads(spec_file.read_text())
                metrics = json.loads((spec_file.parent / "metrics.json").read_text())
            except (OSError, ValueError):
                continue
            model, trainer = spec.get("model") or {}, spec.get("trainer") or {}
            if (trainer.get("accelerator"), trainer.get("precision")) != device or "train_tokens_per_s" not in metrics:
                continue
            self.figures.setdefault(model["name"], []).append(
                (model["params"], metrics["train_tokens_per_s"], metrics.get("predict_tokens_per_s", 0.0))
            )

    def tokens_per_s(self, model_cfg: DictConfig, phase: str) -> tuple[float, str]:
        """The rate, and where it comes from."""
        column = 1 if phase == "train" else 2
        own = [f[column] for f in self.figures.get(model_cfg.name, []) if f[column]]
        if own:
            return statistics.median(own), f"{model_cfg.name}'s {len(own)} stages in the cache"
        others = [f[0] * f[column] * FLOPS_PER_TOKEN[phase] for fs in self.figures.values() for f in fs if f[column]]
        if others:
            rate, source = statistics.median(others), f"the FLOP rate of {len(others)} stages of other models"
        else:
            defaults = DEFAULT_FLOPS.get(self.device, DEFAULT_FLOPS[("cpu", "32-true")])
            rate, source = defaults[phase], f"the default for {' '.join(self.device)}"
        return rate / (FLOPS_PER_TOKEN[phase] * model_cfg.params), source


class Planner:
    """Plans jobs one after another, sharing what they have in common: the splits of a task
    and seed, their tokens under each tokenizer, and the entries earlier jobs will build."""

    def __init__(self):
        self.splits: dict[str, object] = {}
        self.lengths: dict[tuple, dict[str, np.ndarray]] = {}
        self.planned: set[str] = set()
        self.sources: dict[str, str] = {}
        self.speeds: dict[tuple, Speeds] = {}  # by stage folder and device: the cache is read once

    def job(
        self,
        cfg: DictConfig,
        number: int = 0,
        overrides=(),
        sweep: bool = False,
        runner: StageRunner | None = None,
        requests: list[StageRequest] | None = None,
    ) -> JobPlan:
        """The plan of one job. A job about to run passes its ``runner`` and checked ``requests``:
        its splits and tokens are then the run's own."""
        job = JobPlan(number, list(overrides))
        if requests is None:
            requests, job.skipped = preflight(cfg, sweep=sweep)
        if job.skipped:
            return job
        if runner is None:
            key = json.dumps([str(cfg.paths.data_dir), cfg.seed, task_settings(cfg.task)], sort_keys=True)
            if key not in self.splits:
                self.splits[key] = tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)
            runner = StageRunner(cfg, self.splits[key])
        device = (str(cfg.trainer.accelerator), str(cfg.trainer.precision))
        if (cfg.paths.stage_dir, device) not in self.speeds:
            self.speeds[cfg.paths.stage_dir, device] = Speeds(cfg.paths.stage_dir, device)
        speeds = self.speeds[cfg.paths.stage_dir, device]
        entries: dict[str, str] = {}  # role -> entry, as the runner's keys

        def visit(request: StageRequest) -> str:
            request = runner.trimmed(request)
            features = [visit(r) for r in runner.feature_requests(request)]
            keys = runner.dependency_keys(request, entries.get, features)
            folder = runner.cache.path(*runner.entry(request, keys))
            if any(s.entry == folder.name for s in job.stages):  # a probe's features, shared by two stages
                return folder.name
            model = "relabelled labels" if request.kind == "relabel" else request.model.name
            if folder.is_dir():
                status = "cached"
            elif folder.name in self.planned:
                status = "shared"
            else:
                status = "train"
                self.planned.add(folder.name)
            seconds = self.seconds(cfg, runner, request, speeds) if status == "train" else 0.0
            job.stages.append(PlannedStage(request.role, model, folder.name, status, seconds))
            return folder.name

        for request in requests:
            entries[request.role] = visit(request)
        return job

    def token_lengths(self, runner: StageRunner, model_cfg: DictConfig) -> dict[str, np.ndarray]:
        """Tokens per row of every split under the model's tokenizer, both texts of a pair."""
        key = (runner.data_key, model_cfg.path, model_cfg.max_length)
        if key not in self.lengths and model_cfg.get("image_size"):  # images: one unit of work per row
            self.lengths[key] = {name: np.ones(len(rows), dtype=int) for name, rows in runner.splits.items()}
        if key not in self.lengths:
            _, tokenized = runner.tokenized(model_cfg)
            self.lengths[key] = {
                name: sum(np.array([len(ids) for ids in rows[column]], dtype=int) for column in TOKEN_COLUMNS[:columns])
                if len(rows)
                else np.zeros(0, dtype=int)  # an empty split (task.n_val=0) is never tokenised
                for name, rows in tokenized.items()
                for columns in [2 if "input_ids_b" in rows.column_names else 1]
            }
        return self.lengths[key]

    def seconds(self, cfg: DictConfig, runner: StageRunner, request: StageRequest, speeds: Speeds) -> float:
        if request.kind == "relabel":  # arithmetic on labels, or a probe fitted on cached features
            return 0.0
        if request.kind == "classifier" and finetune_of(cfg, request.model).name == "probe":
            return PROBE_HEAD_S
        lengths = self.token_lengths(runner, request.model)
        rate = {}
        for phase in FLOPS_PER_TOKEN:
            rate[phase], self.sources[f"{request.model.name}, {phase}"] = speeds.tokens_per_s(request.model, phase)
        predicted = sum(int(lengths[name].sum()) for name in request.predicts)
        if request.kind == "features":
            return STAGE_OVERHEAD_S + predicted / rate["predict"]
        if request.kind == "generative":
            text = int(lengths["train_a"].sum() + lengths["train_b"].sum())
            return STAGE_OVERHEAD_S + request.options["epochs"] * text / rate["train"]
        epochs = epochs_of(cfg, request.model)
        rows = request.rows.indices(len(lengths[request.rows.split]))
        trained = epochs * int(lengths[request.rows.split][rows.start : rows.stop].sum())
        validated = round(epochs / cfg.select.val_every) * int(lengths["val"].sum())
        return STAGE_OVERHEAD_S + trained / rate["train"] + (validated + predicted) / rate["predict"]


def sweep_jobs() -> list[list[str]] | None:
    """Every job's overrides in this multirun, split as Hydra's basic sweeper splits them (the
    preset's ``hydra.sweeper.params``, then the command line); None outside a multirun, or
    where the jobs run in other processes and this one cannot see the command line."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    arguments = [  # Hydra's own settings (hydra.sweep.dir=..., hydra/launcher=...) make no jobs
        a for a in get_args_parser().parse_known_args(sys.argv[1:])[0].overrides if not a.startswith("hydra")
    ]
    params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    try:
        batches = BasicSweeper.split_arguments(parser.parse_overrides([*params, *arguments]), None)
    except HydraException:  # a launcher's worker process: its command line is the launcher's
        return None
    jobs = [list(job) for batch in batches for job in batch]
    number = hydra_cfg.job.num
    return jobs if number < len(jobs) and sorted(jobs[number]) == sorted(hydra_cfg.overrides.task) else None


def is_model_sweep(overrides: list[str]) -> bool:
    return any(o.startswith("model@") for o in overrides)


def plan_jobs(jobs: list[list[str]], extra: tuple[str, ...] = ()) -> tuple[list[JobPlan], Planner]:
    planner = Planner()
    config_name = HydraConfig.get().job.config_name
    # Config folders added on the command line (hydra.searchpath=[...]) hold options the jobs name.
    search = [o for o in HydraConfig.get().overrides.hydra if o.startswith("hydra.searchpath")]
    shared = set.intersection(*map(set, jobs)) if len(jobs) > 1 else {o for o in jobs[0] if o.startswith("command=")}
    plans = []
    for number, overrides in enumerate(jobs):
        shown = [o for o in overrides if o not in shared]
        try:
            cfg = compose(config_name=config_name, overrides=[*search, *overrides, *extra])
            plans.append(planner.job(cfg, number, shown, sweep=is_model_sweep(overrides) and len(jobs) > 1))
        except (W2SError, HydraException) as err:  # that job will stop with this error; the others run
            plans.append(JobPlan(number, shown, error=str(err).splitlines()[0]))
    return plans, planner


def summary(plans: list[JobPlan], device: str) -> str:
    stages = [s for p in plans for s in p.stages]
    trained = sum(s.status == "train" for s in stages)
    reused = sum(s.status == "cached" for s in stages)
    jobs = f"{len(plans)} job{'s' if len(plans) != 1 else ''}"
    skipped, stopping = sum(p.skipped is not None for p in plans), sum(p.error is not None for p in plans)
    if skipped or stopping:
        counts = ((skipped, "skipped"), (stopping, "will stop"))
        jobs += " (" + ", ".join(f"{n} {what}" for n, what in counts if n) + ")"
    total = sum(p.seconds for p in plans)
    return (
        f"plan: {jobs}, {trained} stage{'s' if trained != 1 else ''} to train (about {duration(total)} on this "
        f"machine, {device}), {reused} reused from the cache"
    )


def cpu_sized(jobs: list[list[str]], cfg: DictConfig) -> str | None:
    """On a CPU, past LONG_ON_CPU_S: the same jobs at the offline budget, with its estimate."""
    if cfg.trainer.accelerator != "cpu" or HydraConfig.get().runtime.choices.get("budget"):
        return None
    try:
        plans, _ = plan_jobs(jobs, (CPU_SIZED,))
    except W2SError:
        return None
    seconds = sum(p.seconds for p in plans)
    return f"to try it CPU-sized, add {CPU_SIZED} (halves of 500 rows; about {duration(seconds)})"


def lines(cfg: DictConfig, plans: list[JobPlan], jobs: list[list[str]] | None) -> list[str]:
    """The one-line total of ``plans``; past half an hour on a CPU, also the CPU-sized way to try
    the same ``jobs`` (composed again, so only inside a Hydra app)."""
    found = [summary(plans, f"{cfg.trainer.accelerator}, {cfg.trainer.precision}")]
    if jobs and sum(p.seconds for p in plans) > LONG_ON_CPU_S:
        found.append(cpu_sized(jobs, cfg) or "")
    return [line for line in found if line]


# The plans of the multiruns this process runs jobs of, by sweep folder: made by the first job.
SWEEPS: dict[str, list[JobPlan]] = {}


def log_start(cfg: DictConfig, runner: StageRunner | None = None, requests: list[StageRequest] | None = None) -> None:
    """Log the plan's total before anything trains: the whole sweep's at a multirun's first
    job (then this job's own line, also for a job the ladder skips), else this run's."""
    in_hydra = HydraConfig.initialized()
    jobs = sweep_jobs() if in_hydra else None
    if jobs:
        folder = HydraConfig.get().sweep.dir
        if folder not in SWEEPS:
            SWEEPS[folder], _ = plan_jobs(jobs)
            for line in lines(cfg, SWEEPS[folder], jobs):
                log.info("%s", line)
        log.info("%s", SWEEPS[folder][HydraConfig.get().job.num].line())
    elif runner is not None:
        job = Planner().job(cfg, runner=runner, requests=requests)
        overrides = [list(HydraConfig.get().overrides.task)] if in_hydra else None
        for line in lines(cfg, [job], overrides):
            log.info("%s", line)


def log_done(trained: int, reused: int) -> None:
    """In a multirun whose plan this process made: ``job 3/8 done, 2 stages trained, 1 reused,
    about 40 min left`` (the estimates of the jobs after this one)."""
    if not HydraConfig.initialized() or HydraConfig.get().sweep.dir not in SWEEPS:
        return
    plans, number = SWEEPS[HydraConfig.get().sweep.dir], HydraConfig.get().job.num
    log.info(
        "job %d/%d done, %d stage%s trained, %d reused, about %s left",
        number + 1,
        len(plans),
        trained,
        "" if trained == 1 else "s",
        reused,
        duration(sum(p.seconds for p in plans[number + 1 :])),
    )


def run(cfg: DictConfig) -> None:
    """``command=plan``: print the plan of the run or sweep these overrides describe; train nothing.
    In a multirun the first job plans them all, and the others print nothing."""
    jobs = sweep_jobs()
    if jobs and HydraConfig.get().job.num > 0:
        return
    jobs = jobs or [list(HydraConfig.get().overrides.task)]
    plans, planner = plan_jobs(jobs)
    total, *hints = lines(cfg, plans, jobs)
    print(total)
    for plan in plans:
        print("  " + plan.line())
    for what, source in sorted(planner.sources.items()):
        print(f"  speed of {what}: {source}")
    for hint in hints:
        print(hint)
