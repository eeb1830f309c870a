"""Methods: what an experiment trains, as a recipe of stage requests.

A method is a function ``(cfg, init=None) -> list[StageRequest]`` named by the ``fn`` of a
``conf/method/*.yaml``; ``init`` is the role of a stage whose weights every stage of the
strong model starts from (generative fine-tuning passes it to the method it wraps). Every
recipe holds the ``weak``, ``ceiling`` and ``transfer`` roles that PGR is computed from.
A new method is one such function and one yaml (README, "Extend it").

Requests are built in order by ``runner.StageRunner``; a request names the roles it needs
(``supervisor``, ``init``), so those come earlier in the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hydra
from omegaconf import DictConfig

from w2s_lightning.errors import ConfigError
from w2s_lightning.roles import BOOTSTRAP, CEILING, GENERATIVE, TRANSFER, WEAK, rung

# What a stage predicts: every stage val and test; a supervisor also half B, for its student.
# Every stage on ground truth predicts half B, so a model trained on ground truth is one stage
# whether it serves as a weak model or as a ceiling (a ladder sweep trains it once).
EVALUATED = ("val", "test")
LABELLER = ("train_b", "val", "test")


@dataclass(frozen=True)
class Rows:
    """The rows a stage trains on: part ``part`` (from 0) of ``parts`` equal, contiguous,
    disjoint parts of ``split``."""

    split: str
    part: int = 0
    parts: int = 1

    def indices(self, n_rows: int) -> range:
        return range(round(self.part * n_rows / self.parts), round((self.part + 1) * n_rows / self.parts))

    @property
    def name(self) -> str:
        return self.split if self.parts == 1 else f"{self.split}_part{self.part + 1}of{self.parts}"


@dataclass
class StageRequest:
    """One stage to build. ``kind``: ``classifier`` (trains on ``rows``: ground truth, or the
    soft labels of the ``supervisor`` role), ``generative`` (the model's language-model
    objective on the task's unlabeled text; ``options``: epochs, lr, mlm_probability),
    ``features`` (a frozen model's pooled features, for probes) or ``relabel`` (no model: the
    function ``options['fn']`` maps the supervisor's predictions of every split to new ones)."""

    role: str
    model: DictConfig | None = None
    supervisor: str | None = None
    rows: Rows = Rows("train_a")
    loss: DictConfig | None = None
    init: str | None = None
    predicts: tuple[str, ...] = EVALUATED
    kind: str = "classifier"
    options: dict = field(default_factory=dict)


def recipe(cfg: DictConfig) -> list[StageRequest]:
    """The requests of ``cfg.method``."""
    return import_function(cfg.method.fn)(cfg)


def import_function(path: str):
    """The function at ``package.module.function``: a method, or a relabelling rule."""
    try:
        return hydra.utils.get_method(path)
    except Exception as err:
        raise ConfigError(
            f"function {path!r} cannot be imported ({err}); name a function as "
            "package.module.function, importable from where run.py runs."
        ) from None


def direct(cfg: DictConfig, init: str | None = None) -> list[StageRequest]:
    """The paper's setting: the weak model and the ceiling on ground truth of half A, the
    transfer on the weak model's soft labels of half B."""
    return [
        StageRequest(WEAK, cfg.weak, loss=cfg.ground_truth_loss, predicts=LABELLER),
        StageRequest(CEILING, cfg.strong, loss=cfg.ground_truth_loss, init=init, predicts=LABELLER),
        StageRequest(TRANSFER, cfg.strong, supervisor=WEAK, rows=Rows("train_b"), loss=cfg.loss, init=init),
    ]


def bootstrap(cfg: DictConfig, init: str | None = None) -> list[StageRequest]:
    """``direct``, plus weak -> rung 1 -> ... -> strong through ``method.rungs``. Half B is cut into
    one disjoint part per step, so each rung learns from labels its supervisor made on rows
    that supervisor never trained on, and labels the next part for the rung above it."""
    if not cfg.method.get("rungs"):
        raise ConfigError(
            "bootstrapping needs intermediate models: add method/rungs=<a conf/method/rungs option> "
            "(+method/rungs=... under method=generative), e.g. method/rungs=minilm_l6."
        )
    models = [*cfg.method.rungs.values(), cfg.strong]
    requests, supervisor = direct(cfg, init), WEAK
    for i, model in enumerate(models):
        last = i == len(models) - 1
        role = BOOTSTRAP if last else rung(i + 1)
        requests.append(
            StageRequest(
                role,
                model,
                supervisor=supervisor,
                rows=Rows("train_b", i, len(models)),
                loss=cfg.loss,
                init=init if last else None,
                predicts=EVALUATED if last else LABELLER,
            )
        )
        supervisor = role
    return requests


def generative(cfg: DictConfig, init: str | None = None) -> list[StageRequest]:
    """The strong model first trains its own objective (``model.objective``) on the task's
    unlabeled text; then the method ``method.then`` runs with every stage of the strong model
    (ceiling, transfer, last rung) starting from those weights, so PGR compares like with like."""
    options = {k: cfg.method[k] for k in ("epochs", "lr", "mlm_probability")}
    inner = import_function(cfg.method.then)(cfg, init=GENERATIVE)
    return [StageRequest(GENERATIVE, cfg.strong, kind="generative", options=options), *inner]
