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

from dataclasses import dataclass, field, replace

import hydra
from omegaconf import DictConfig, OmegaConf

from w2s_lightning.errors import ConfigError
from w2s_lightning.roles import BOOTSTRAP, CEILING, ENSEMBLE, GENERATIVE, RELABELLED, TRANSFER, WEAK, rung, s2s_round
from w2s_lightning.zoo import SCRATCH_PREFIX

# What a stage predicts: every stage val and test; a supervisor also half B, for its student.
# Every stage on ground truth predicts half B, so a model trained on ground truth is one stage
# whether it serves as a weak model or as a ceiling (a ladder sweep trains it once); so does a
# transfer, so strong-to-strong rounds start from the transfer that ``direct`` trains.
EVALUATED = ("val", "test")
LABELLER = ("train_b", "val", "test")

# conf/finetune/full.yaml: every weight trains, at the model's own learning rate and epochs.
FULL_FINETUNE = {"name": "full", "lr": None, "epochs": None}


def finetune_of(cfg: DictConfig, model_cfg: DictConfig) -> DictConfig:
    """How a stage of ``model_cfg`` trains: ``finetune``, except that a model from a random init
    (``scratch:``, vision.py) always trains every weight, whatever the student does: its random
    features are nothing to probe or adapt."""
    return OmegaConf.create(FULL_FINETUNE) if model_cfg.path.startswith(SCRATCH_PREFIX) else cfg.finetune


def epochs_of(cfg: DictConfig, model_cfg: DictConfig) -> int:
    """Passes over a stage's training rows: its ``finetune.epochs``, else the model's own
    ``epochs`` (a model trained from scratch needs more), else ``train.epochs``."""
    return finetune_of(cfg, model_cfg).epochs or model_cfg.get("epochs") or cfg.train.epochs


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
    ``features`` (a frozen model's pooled features, for probes) or ``relabel`` (no training:
    the rule ``options['rule']``, a config with ``_target_`` (relabel.py), maps the predictions
    of the supervisor and of the ``others`` to new ones, reading ``model``'s frozen features
    when a model is named)."""

    role: str
    model: DictConfig | None = None
    supervisor: str | None = None
    rows: Rows = Rows("train_a")
    loss: DictConfig | None = None
    init: str | None = None
    predicts: tuple[str, ...] = EVALUATED
    kind: str = "classifier"
    options: dict = field(default_factory=dict)
    others: tuple[str, ...] = ()


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
        StageRequest(
            TRANSFER, cfg.strong, supervisor=WEAK, rows=Rows("train_b"), loss=cfg.loss, init=init, predicts=LABELLER
        ),
    ]


def strong_to_strong(cfg: DictConfig, init: str | None = None) -> list[StageRequest]:
    """``direct``, then ``method.rounds`` strong-to-strong rounds (EleutherAI's ``s2s_iters``):
    a fresh strong model learns half B from the previous student's predictions of it. The
    first student is the direct transfer (the same cached stage); the last round is the
    ``transfer`` that PGR reads. 0 rounds is ``direct``."""
    rounds = cfg.method.rounds
    if not isinstance(rounds, int) or rounds < 0:
        raise ConfigError(f"method.rounds={rounds!r}: give the number of strong-to-strong rounds, 0 or more.")
    weak, ceiling, transfer = direct(cfg, init)
    students = [transfer]
    for number in range(1, rounds + 1):
        students[-1] = replace(students[-1], role=s2s_round(number - 1))
        students.append(replace(transfer, supervisor=students[-1].role))
    return [weak, ceiling, *students]


def relabelled(cfg: DictConfig, init: str | None = None) -> list[StageRequest]:
    """``direct``, with the weak model's labels passed through the rule ``method.rule``
    (relabel.py: a probe's relabelling, a probe's or a confidence filter) before the transfer
    learns from them. With ``method.features: true`` the rule reads the strong model's frozen
    features, of its hidden layer ``method.layer`` (null: the one it classifies from)."""
    weak, ceiling, transfer = direct(cfg, init)
    model = None
    if cfg.method.features:
        layer = {} if cfg.method.layer is None else {"hidden_layer": cfg.method.layer}
        model = OmegaConf.merge(cfg.strong, layer)
    rule = StageRequest(
        RELABELLED, model, supervisor=WEAK, kind="relabel", predicts=LABELLER, options={"rule": cfg.method.rule}
    )
    return [weak, rule, ceiling, replace(transfer, supervisor=RELABELLED)]


def weak_ensemble(cfg: DictConfig, init: str | None = None) -> list[StageRequest]:
    """``direct``, with the transfer learning the mean soft label of the weak model and of each
    model of ``method.members`` other than it, each trained on ground truth of half A as the
    weak model is (one cached stage per supervisor). Every member must be smaller than the
    strong model; PGR keeps the weak model's accuracy as its floor."""
    weak, ceiling, transfer = direct(cfg, init)
    members = [m for m in cfg.method.members.values() if m.name != cfg.weak.name]
    if not members:
        raise ConfigError(f"method.members names no supervisor besides the weak model {cfg.weak.name}; add one.")
    for member in members:
        if member.params is not None and cfg.strong.params is not None and member.params >= cfg.strong.params:
            raise ConfigError(
                f"ensemble member {member.name} ({member.params:g} parameters) is not smaller than the strong "
                f"model {cfg.strong.name} ({cfg.strong.params:g}): weak-to-strong needs every supervisor smaller."
            )
    supervisors = [replace(weak, role=f"{WEAK}:{m.name}", model=m) for m in members]
    mean = StageRequest(
        ENSEMBLE,
        supervisor=WEAK,
        others=tuple(s.role for s in supervisors),
        kind="relabel",
        predicts=LABELLER,
        options={"rule": {"_target_": "w2s_lightning.relabel.ensemble_mean"}},
    )
    return [weak, *supervisors, mean, ceiling, replace(transfer, supervisor=ENSEMBLE)]


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
