"""Every check a run makes before it trains anything, in one place: the config (``check_config``),
the folders it writes, and what this machine must hold (zoo wheels, model folders, tokenizers).
A bad value stops here with an error that names it and the fix, not hours into a sweep.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import hydra
import psutil
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from w2s_lightning import methods, parallel, zoo
from w2s_lightning.errors import CacheError, ConfigError
from w2s_lightning.models import check_loadable, check_pooling
from w2s_lightning.roles import BOOTSTRAP, PGR_ROLES
from w2s_lightning.runner import accumulation

log = logging.getLogger(__name__)

# Training every weight with AdamW holds float32 weights, gradients and two moments.
BYTES_PER_TRAINED_PARAMETER = 16
# What activations, the data and the framework leave free at the least: refuse beyond 90%.
MEMORY_HEADROOM = 0.9


def device_memory(cfg: DictConfig) -> tuple[int, str]:
    """The bytes of memory one stage may use, and where: the first GPU's, or this machine's RAM."""
    if cfg.trainer.get("accelerator") == "gpu":
        return torch.cuda.get_device_properties(0).total_memory, "GPU"
    return psutil.virtual_memory().total, "machine's RAM"


def trains_every_weight(cfg: DictConfig, request: methods.StageRequest) -> bool:
    return request.kind == "generative" or (
        request.kind == "classifier" and methods.finetune_of(cfg, request.model).name == "full"
    )


def check_memory(cfg: DictConfig, model_cfg: DictConfig, role: str) -> None:
    """Refuse to train every weight of a model whose weights and AdamW state alone outgrow the
    device: it would be killed (or swap for days) minutes into the stage. FSDP shares them
    among the ranks; DDP gives every rank all of them."""
    shards = parallel.world_size(cfg) if parallel.shards_states(cfg) else 1
    need = BYTES_PER_TRAINED_PARAMETER * model_cfg.params / shards
    have, where = device_memory(cfg)
    if need > MEMORY_HEADROOM * have:
        sharded = f", sharded over {shards} ranks" if shards > 1 else ""
        raise ConfigError(
            f"model '{model_cfg.name}' ({model_cfg.params:.3g} parameters): {role} trains every weight, and its "
            f"float32 weights, gradients and AdamW moments alone take about {need / 2**30:.1f} GiB per device "
            f"({BYTES_PER_TRAINED_PARAMETER} bytes per parameter{sharded}, before activations), more than "
            f"{MEMORY_HEADROOM:.0%} of this {where} ({have / 2**30:.1f} GiB). Use trainer=gpu_fsdp over more GPUs "
            f"(README: memory per model), finetune=lora (frozen weights, {4 * model_cfg.params / 2**30:.1f} GiB in "
            "float32, trainable adapters) or finetune=probe, or a machine with more memory."
        )


def check_writable(key: str, folder: Path) -> None:
    """Create ``folder`` and write a file there, or say which setting to change: a run that
    cannot write its cache or results would fail after training."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise CacheError(
            f"{key}={folder} cannot be written ({type(err).__name__}: {err.strerror or err}); point "
            f"{key} (or W2S_CACHE_DIR / W2S_LOG_DIR) at a folder you can write."
        ) from err


def check_config(cfg: DictConfig, requests: list[methods.StageRequest] | None = None) -> list[methods.StageRequest]:
    """Refuse a config that would fail or mislead halfway through, before any training, and
    return its recipe (``requests``, else built here). Types and required keys of models and
    tasks are checked by their schemas (``config.ModelConfig``, ``config.TaskConfig``)."""
    if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        raise ConfigError(
            "trainer=gpu, but this machine has no CUDA GPU that torch can see; "
            "use trainer=cpu here, or install the CUDA build of torch (README)."
        )
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed}: the experiment seed must be an integer, 0 or more (e.g. seed=0,1,2).")
    parallel.check(cfg)
    requests = methods.recipe(cfg) if requests is None else requests
    for request in requests:  # a loss refuses settings it cannot mean (aux_coef=-1), here rather than mid-run
        if request.loss is not None:
            try:
                hydra.utils.instantiate(request.loss.fn)
            except InstantiationException as err:
                raise (err.__cause__ if isinstance(err.__cause__, ConfigError) else ConfigError(str(err))) from None
    missing = set(PGR_ROLES) - {r.role for r in requests}
    if missing:
        raise ConfigError(
            f"method {cfg.method.name} ({cfg.method.fn}) yields no {sorted(missing)} stage; "
            f"every recipe needs {list(PGR_ROLES)}, which PGR is computed from."
        )
    for request in (r for r in requests if r.model is not None):
        model_cfg = request.model
        accumulation(cfg, model_cfg)
        check_pooling(model_cfg.pooling)
        check_modality(cfg, request)
        lr = methods.finetune_of(cfg, model_cfg).lr or model_cfg.lr
        if request.kind == "classifier" and lr <= 0:
            raise ConfigError(
                f"model '{model_cfg.name}': learning rate {lr:g} (finetune.lr, else {model_cfg.name}.lr) "
                "must be positive; the paper's are 5e-5 (GPT-2) and 1e-5 (Qwen)."
            )
        if model_cfg.dtype not in (None, "float32") and trains_every_weight(cfg, request):
            # AdamW steps of lr 1e-5 are below bf16's resolution for most weights (and every
            # LayerNorm near 1.0): pure half-precision training leaves them where they were.
            raise ConfigError(
                f"model '{model_cfg.name}' loads in dtype={model_cfg.dtype}, but {request.role} trains every weight "
                "and needs float32 master weights (bf16 weights swallow small AdamW updates). Set dtype=null for it "
                "(float32 weights, with trainer.precision=bf16-mixed for speed), or use finetune=lora or "
                "finetune=probe, whose frozen backbone may stay in half precision."
            )
    if (cfg.finetune.epochs or cfg.train.epochs) < 1:
        raise ConfigError(
            f"train.epochs={cfg.finetune.epochs or cfg.train.epochs} (finetune.epochs, else train.epochs) "
            "trains nothing; use 1 or more (the paper: 2)."
        )
    for model_cfg in {r.model.name: r.model for r in requests if r.model is not None}.values():
        if model_cfg.epochs is not None and model_cfg.epochs < 1:
            raise ConfigError(
                f"{model_cfg.name}.epochs={model_cfg.epochs} trains nothing; use 1 or more, or null for train.epochs."
            )
    if cfg.train.head_lr is not None and cfg.train.head_lr <= 0:
        raise ConfigError(f"train.head_lr={cfg.train.head_lr} must be positive, or null for the model's lr.")
    if cfg.method.get("rungs") and BOOTSTRAP not in {r.role for r in requests}:
        raise ConfigError(
            f"method={cfg.method.name} has bootstrapping rungs ({', '.join(cfg.method.rungs)}), but trains none; "
            "use method=bootstrap (or, for method=generative, method.then=w2s_lightning.methods.bootstrap), "
            "or drop the rungs."
        )
    if cfg.task.pairwise and cfg.finetune.name == "probe":
        raise ConfigError(
            f"task={cfg.task.name} is reward modelling: a pair's texts are scored one at a time, and "
            "finetune=probe's frozen features hold one text per row. Use finetune=full or finetune=lora."
        )
    if cfg.select.callbacks and cfg.task.n_val <= 0:
        raise ConfigError(f"select={cfg.select.name} selects on the validation split; set task.n_val > 0.")
    for request in (r for r in requests if trains_every_weight(cfg, r)):  # once the device is known to exist
        check_memory(cfg, request.model, request.role)
    return requests


def check_modality(cfg: DictConfig, request: methods.StageRequest) -> None:
    """An image task needs image models (``image_size`` set) and a text task text models; an
    image model has no LoRA targets and no generative objective."""
    model_cfg, images = request.model, bool(cfg.task.image_dir)
    if bool(model_cfg.image_size) != images:
        reads, task_holds = ("images", "texts") if model_cfg.image_size else ("texts", "images")
        raise ConfigError(
            f"model '{model_cfg.name}' reads {reads}, but task={cfg.task.name} holds {task_holds}; "
            f"use {'an image model (small_cnn, efficientnet_lite0)' if images else 'a text model'} for {request.role}."
        )
    if images and (methods.finetune_of(cfg, model_cfg).name == "lora" or request.kind == "generative"):
        what = "finetune=lora" if cfg.finetune.name == "lora" else f"method={cfg.method.name} (generative fine-tuning)"
        raise ConfigError(
            f"{what} is for text models; task={cfg.task.name} is an image task: use finetune=full or finetune=probe."
        )


def skip_reason(cfg: DictConfig, sweep: bool = True) -> str | None:
    """Why a ladder sweep skips this (weak, strong) pair, or None when it runs. Outside a
    sweep over models, naming the two models is itself the request to pair them, whatever
    their families and sizes."""
    if not sweep:
        if cfg.weak.params > cfg.strong.params:
            log.warning(
                "the weak model %s is larger than the strong one %s: running the pair asked for",
                cfg.weak.name,
                cfg.strong.name,
            )
        return None
    if cfg.weak.family != cfg.strong.family and not cfg.ladder.cross_family:
        return (
            f"{cfg.weak.name} ({cfg.weak.family}) and {cfg.strong.name} ({cfg.strong.family}) are of different "
            "families, and ladders run within one family as the paper's do; set ladder.cross_family=true to run it"
        )
    weak, strong = cfg.weak.params, cfg.strong.params
    sizes = f"{cfg.weak.name} has {weak:.3g} parameters, {cfg.strong.name} {strong:.3g}"
    if weak > strong and not cfg.ladder.weak_larger:
        return f"the weak model is larger than the strong one ({sizes}); set ladder.weak_larger=true to run it"
    if weak == strong and not cfg.ladder.same_size:
        return f"weak and strong are the same size ({sizes}); set ladder.same_size=true to run it"
    return None


def preflight(
    cfg: DictConfig, output_dir: Path | None = None, sweep: bool = False
) -> tuple[list[methods.StageRequest], str | None]:
    """Run every check on ``cfg``; return its recipe, built once, and why a ladder sweep skips
    the pair (``skip_reason``; None when it runs). ``output_dir``: this run's folder, checked
    for writing with the cache's (a planned job has none yet). A skipped pair is not asked for
    its models: it will not load them."""
    requests = check_config(cfg)
    folders = {"paths.stage_dir": Path(cfg.paths.stage_dir), "paths.zoo_dir": Path(cfg.paths.zoo_dir)}
    if output_dir is not None:
        folders = {"paths.output_dir": output_dir, **folders}
    for key, folder in folders.items():
        check_writable(key, folder)
    reason = skip_reason(cfg, sweep)
    if reason:
        return requests, reason
    models = {r.model.name: r.model for r in requests if r.model is not None}.values()
    for model_cfg in models:  # what this machine lacks: a zoo model's wheels, a model folder, a tokenizer
        zoo.check_available(model_cfg.path, cfg.paths.zoo_dir)
    for model_cfg in models:
        check_loadable(model_cfg, cfg.paths.zoo_dir)
    return requests, None
