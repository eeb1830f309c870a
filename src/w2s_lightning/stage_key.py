"""The one place that decides a stage's cache key: everything that changes its result, and
nothing that does not (logging, paths, display settings).

A stage's spec holds the formatted rows' fingerprint, the task, the seed, the model, the
Trainer's settings (precision, max_steps, limit_train_batches, gradient clipping, devices, ...)
and what its request asks for: its rows, its supervisor's key, its loss, the weights it
starts from. A probe's frozen features (a forward pass, one stage per split) hold only the
split's fingerprint, the model, the Trainer's settings and the weights: test's are shared by
every seed. The cache stores the stage under ``<kind>-<hash of the spec>``.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from w2s_lightning.cache import content_key
from w2s_lightning.methods import StageRequest

# Bump when the artifacts of a stage change meaning, so old cache entries are not reused.
# 4: stages are built from requests (rows as split/part, the selection group, the
# ground-truth loss and the model schema's fields in the key). A probe's features became one
# stage per split without a bump: their spec changed shape, so no old key can match.
# 5: the task schema (config.TaskConfig) gave every task config its fields; a pairwise task's
# fingerprint holds its second texts.
STAGE_FORMAT = 5
GROUND_TRUTH = "ground_truth"
# Trainer settings and model fields that change only what is shown, never a stage's result.
DISPLAY_ONLY_TRAINER_KEYS = ("log_every_n_steps", "enable_model_summary", "enable_progress_bar")
DISPLAY_ONLY_MODEL_KEYS = ("about",)
# Model fields the schema gained after stages were cached, at the value that keeps the old
# behaviour: left out of the key there, so those stages keep their keys.
MODEL_DEFAULTS = {"hidden_layer": None}
# Task fields that describe or check the data, never change the rows (those are in the fingerprint).
DISPLAY_ONLY_TASK_KEYS = ("about", "columns")
# Training settings that change how a stage runs, not what it ends with.
RUN_ONLY_TRAIN_KEYS = ("checkpoint_every",)
# Trainer settings conf/trainer gained after stages were cached, at the value Lightning takes
# without them: left out of the key there, so those stages keep their keys.
LIGHTNING_DEFAULTS = {"strategy": "auto", "num_nodes": 1}


def plain(node: DictConfig | None):
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def fingerprint(splits) -> str:
    """A hash of every split's texts and labels: stage keys follow the data itself, so edited
    files, another hub revision or a changed formatter never reuse stale stages."""
    return content_key(
        {
            name: [list(rows[c]) for c in ("text", "text_b", "label") if c in rows.column_names]
            for name, rows in splits.items()
        }
    )


def settings(node: DictConfig, display_only: tuple[str, ...], defaults: dict | None = None) -> dict:
    """``node`` as a plain dict without its display-only keys, nor the keys added later that
    sit at the value that keeps old keys (``defaults``)."""
    defaults = defaults or {}
    return {k: v for k, v in plain(node).items() if k not in display_only and not (k in defaults and defaults[k] == v)}


def model_settings(model_cfg: DictConfig) -> dict:
    return settings(model_cfg, DISPLAY_ONLY_MODEL_KEYS, MODEL_DEFAULTS)


def task_settings(task_cfg: DictConfig) -> dict:
    return settings(task_cfg, DISPLAY_ONLY_TASK_KEYS)


def trainer_settings(cfg: DictConfig) -> dict:
    return settings(cfg.trainer, DISPLAY_ONLY_TRAINER_KEYS, LIGHTNING_DEFAULTS)


def kind_of(request: StageRequest) -> str:
    """The cache folder's prefix: ``gt`` for a classifier on ground truth (whichever role it
    plays), ``transfer`` for one on a supervisor's labels, else the request's kind."""
    if request.kind == "classifier":
        return "transfer" if request.supervisor else "gt"
    return request.kind


def spec(cfg: DictConfig, data_key: str, request: StageRequest, keys: dict[str, str | None]) -> dict:
    """The spec of ``request``; ``keys`` holds the cache keys of the stages it depends on
    (``supervisor``, ``init``, ``features``)."""
    if request.kind == "features":  # a frozen forward pass: no seed, and the task is in the texts
        return {
            "format": STAGE_FORMAT,
            "data": data_key,
            "features": True,
            "model": model_settings(request.model),
            "trainer": trainer_settings(cfg),
            "init": keys.get("init"),
        }
    common = {"format": STAGE_FORMAT, "data": data_key, "seed": cfg.seed, "task": task_settings(cfg.task)}
    if request.kind == "relabel":  # no model trains: the rule and its inputs decide everything
        return {
            **common,
            "relabel": plain(OmegaConf.create(request.options["rule"])),
            "supervisor": keys["supervisor"],
            "others": keys.get("others"),
            "features": keys.get("features"),
            "predicts": list(request.predicts),
        }
    common.update(model=model_settings(request.model), trainer=trainer_settings(cfg), init=keys.get("init"))
    if request.kind == "generative":
        return {**common, "generative": dict(request.options), "batch_size": cfg.train.batch_size}
    return {
        **common,
        "train": {k: v for k, v in plain(cfg.train).items() if k not in RUN_ONLY_TRAIN_KEYS},
        "finetune": plain(cfg.finetune),
        "loss": plain(request.loss),
        # Model selection is a student's method: a stage on ground truth always keeps its last
        # weights, so PGRs of every selection rule share their end points.
        "select": plain(cfg.select) if request.supervisor else None,
        "labels": keys["supervisor"] if request.supervisor else GROUND_TRUTH,
        "rows": [request.rows.split, request.rows.part, request.rows.parts],
        "predicts": list(request.predicts),
        "features": keys.get("features"),
    }
