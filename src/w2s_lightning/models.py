"""The classifier: a Hugging Face backbone, a pooling rule and a zero-initialised linear head.

Why it is long: the classifier is only as good as its loading; every model source (the hub, a
local folder, the offline zoo), the checks on what a config asks of it (pooling, hidden layer,
length) and the errors that name the fix sit beside the module that uses them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation
from transformers.pytorch_utils import Conv1D

from w2s_lightning import zoo
from w2s_lightning.errors import ConfigError, ModelError

log = logging.getLogger(__name__)


def pool_last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # The position of the last 1 in the attention mask, so left or right padding and
    # token id 0 inside the text never move it (the reference counted ids != 0).
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def pool_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def pool_first(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


POOLINGS = {"last": pool_last, "mean": pool_mean, "first": pool_first}


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling={pooling!r} is unknown; choose one of {sorted(POOLINGS)}.")


def check_hidden_layer(hidden_layer: int | None, config: PretrainedConfig) -> None:
    layers = config.num_hidden_layers  # hidden_states holds the embeddings and one entry per layer
    if hidden_layer is not None and not -(layers + 1) <= hidden_layer <= layers:
        raise ConfigError(
            f"hidden_layer={hidden_layer} is outside this model's {layers} layers; use 0 (embeddings) to "
            f"{layers} (the last layer), a negative index from the end, or null for the backbone's output."
        )


def pair_logits(reward_a: torch.Tensor, reward_b: torch.Tensor) -> torch.Tensor:
    """Two-class logits of a pair from its rewards: softmax gives P(a is the better one) =
    sigmoid(r_a - r_b), the Bradley-Terry model. Cross-entropy on them against label 1 is the
    Bradley-Terry loss -log sigmoid(r_chosen - r_rejected); against a weak reward model's
    sigmoid(r_a - r_b) it is the same loss on soft labels, and aux_conf works unchanged."""
    return torch.stack([reward_b, reward_a], dim=-1)


class Classifier(nn.Module):
    """Backbone -> pooled hidden state -> linear head with two logits. A reward model
    (``pairwise``) has a one-output head that scores each text of a pair alone, and returns the
    pair's ``pair_logits``."""

    def __init__(self, backbone: nn.Module, pooling: str, pairwise: bool = False, hidden_layer: int | None = None):
        super().__init__()
        check_pooling(pooling)
        check_hidden_layer(hidden_layer, backbone.config)
        self.backbone = backbone
        self.pooling = pooling
        self.hidden_layer = hidden_layer
        self.head = nn.Linear(backbone.config.hidden_size, 1 if pairwise else 2, bias=False)
        # Zero init as in the paper: the classifier starts at exactly 50/50.
        nn.init.zeros_(self.head.weight)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled hidden state: the features a linear probe trains on."""
        if self.hidden_layer is None:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            hidden = outputs.hidden_states[self.hidden_layer]
        return POOLINGS[self.pooling](hidden, attention_mask)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(input_ids, attention_mask).to(self.head.weight.dtype)).float()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        input_ids_b: torch.Tensor | None = None,
        attention_mask_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input_ids_b is None:
            return self.score(input_ids, attention_mask)
        return pair_logits(self.score(input_ids, attention_mask)[:, 0], self.score(input_ids_b, attention_mask_b)[:, 0])


class LinearProbe(nn.Module):
    """A zero-initialised linear head on cached, frozen backbone features."""

    def __init__(self, hidden_size: int, num_labels: int = 2):
        super().__init__()
        self.head = nn.Linear(hidden_size, num_labels)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.to(self.head.weight.dtype)).float()


def add_lora(backbone: nn.Module, finetune: DictConfig) -> nn.Module:
    """Low-rank adapters on the backbone (peft); only they and the head train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=finetune.r, lora_alpha=finetune.alpha, lora_dropout=finetune.dropout, target_modules=finetune.target_modules
    )
    return get_peft_model(backbone, config)


def _load_error(model_cfg: DictConfig, source: str, err: Exception) -> ModelError:
    return ModelError(
        f"model '{model_cfg.name}': cannot load '{source}' ({type(err).__name__}: {err}). "
        f"Zoo models ({zoo.ZOO_MODELS}) work offline as path=zoo:<name>; any local HF folder works "
        "as path=/the/folder; hub ids need the hub."
    )


def without_dropout(config: PretrainedConfig) -> PretrainedConfig:
    """``config`` with every dropout rate at 0 (``hidden_dropout_prob``, ``attention_dropout``,
    GPT-2's ``*_pdrop``, ...). Dropout is switched off here rather than by putting the model in
    eval mode, which would also switch off gradient checkpointing (transformers checkpoints
    only in training mode)."""
    for name, value in config.to_dict().items():
        if isinstance(value, float) and ("dropout" in name or "pdrop" in name):
            setattr(config, name, 0.0)
    return config


def fuse_gelu(model: nn.Module) -> nn.Module:
    """``model`` with each GELU that transformers writes out in Python (GPT-2's ``gelu_new``:
    eight element-wise operations, each a pass over the MLP's activations, and as many saved for
    the backward pass) replaced by PyTorch's one-kernel ``gelu(approximate="tanh")``, the same
    function up to float rounding (transformers' ``gelu_pytorch_tanh``): 3-6% faster prediction
    and 0.2 GB less memory on the GPT-2 benchmark (docs/speed.md, "A fused GELU, and prediction
    in bf16 weights")."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, NewGELUActivation | FastGELUActivation):
                setattr(parent, name, GELUTanh())
    return model


# The layers whose weights autocast casts to the low precision at every call (its matmuls and
# convolutions); layer norms and embeddings it runs in float32, with their float32 weights.
AUTOCAST_LOW_PRECISION_LAYERS = (nn.Linear, Conv1D, nn.modules.conv._ConvNd)


def cast_matmul_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Casts, in place and once, the weights and biases that autocast to ``dtype`` would cast
    at every call: those of linear and convolution layers (not one shared with another kind of
    layer, such as an input embedding tied to an output layer). Under that autocast the model
    computes the same as before, as autocast finds them already cast, without casting each of
    them again for every batch (docs/speed.md, "Weights cast once for prediction")."""
    layers = [m for m in model.modules() if isinstance(m, AUTOCAST_LOW_PRECISION_LAYERS)]
    others = [m for m in model.modules() if not isinstance(m, AUTOCAST_LOW_PRECISION_LAYERS)]
    shared = {id(p) for m in others for p in m.parameters(recurse=False)}
    for layer in layers:
        for param in layer.parameters(recurse=False):
            if id(param) not in shared:
                param.data = param.data.to(dtype)


@contextmanager
def sdpa_replaced_by(model: nn.Module, implementation: str) -> Iterator[None]:
    """Inside the block, every transformers model in ``model`` that computes attention with SDPA
    computes it with ``implementation`` instead. Transformers reads the choice from the config at
    each forward, the attention masks' form too, so switching it between forwards is safe; a
    backward pass that recomputes (gradient checkpointing) must run inside the same block.
    A model that chose another implementation (eager, flash_attention_2) keeps it."""
    configs = {id(m.config): m.config for m in model.modules() if isinstance(m, PreTrainedModel)}
    switched = [c for c in configs.values() if c._attn_implementation == "sdpa"]
    for config in switched:
        config._attn_implementation = implementation
    try:
        yield
    finally:
        for config in switched:
            config._attn_implementation = "sdpa"


def source_options(model_cfg: DictConfig) -> dict:
    """What every ``from_pretrained`` of a model gets besides its path: the hub revision
    (ignored for a local folder) and whether to run the repository's own code."""
    return {"revision": model_cfg.get("revision"), "trust_remote_code": bool(model_cfg.get("trust_remote_code", False))}


def load_pretrained(
    model_class,
    model_cfg: DictConfig,
    zoo_dir: str,
    seed: int | None = None,
    dropout: bool = True,
    fused_gelu: bool = False,
) -> nn.Module:
    """``model_class.from_pretrained`` on ``model_cfg``'s weights (zoo, local folder or hub), in
    training mode, with a clear error when they cannot be loaded.

    Weights load in ``model_cfg.dtype``, float32 when it is null, whatever dtype the checkpoint
    declares: full fine-tuning needs fp32 master weights. ``seed`` seeds every random init the
    load makes (heads the checkpoint lacks, such as an encoder's MLM head); it is set once the
    zoo folder exists, so building the zoo on first use does not shift it. ``fused_gelu``:
    see ``fuse_gelu``."""
    source = zoo.resolve(model_cfg.path, zoo_dir)
    try:
        config = AutoConfig.from_pretrained(source, **source_options(model_cfg))
        if seed is not None:
            pl.seed_everything(seed, workers=True, verbose=False)
        attention = (
            {"attn_implementation": model_cfg.attn_implementation} if model_cfg.get("attn_implementation") else {}
        )
        model = model_class.from_pretrained(
            source,
            config=config if dropout else without_dropout(config),
            **source_options(model_cfg),
            dtype=getattr(torch, model_cfg.get("dtype") or "float32"),
            **attention,
        )
    except (OSError, ValueError) as err:
        raise _load_error(model_cfg, source, err) from err
    # from_pretrained returns eval mode, and Lightning keeps each submodule's mode through a fit:
    # only in training mode does gradient checkpointing run (dropout is off through the config).
    return (fuse_gelu(model) if fused_gelu else model).train()


def load_classifier(
    model_cfg: DictConfig,
    zoo_dir: str,
    finetune: DictConfig | None = None,
    seed: int | None = None,
    dropout: bool = True,
    pairwise: bool = False,
    fused_gelu: bool = False,
) -> Classifier:
    """The backbone of ``model_cfg`` under a fresh head (a reward head when ``pairwise``); with
    ``finetune.name == 'lora'``, with LoRA adapters on the backbone. ``seed`` fixes the
    adapters' random init. An image model (``image_size`` set) comes from ``vision.py``."""
    if model_cfg.get("image_size"):
        from w2s_lightning import vision

        return vision.load_image_classifier(model_cfg, zoo_dir, seed)
    backbone = load_pretrained(AutoModel, model_cfg, zoo_dir, seed=seed, dropout=dropout, fused_gelu=fused_gelu)
    if getattr(backbone, "pooler", None) is not None:
        # An encoder's pooler (BERT, MPNet: a dense layer on the first token) is never used
        # here; DDP refuses parameters that no loss reaches, and nobody pays for its compute.
        backbone.pooler = None
    if model_cfg.get("gradient_checkpointing"):
        backbone.activation_checkpointing_enable()
    if finetune is not None and finetune.name == "lora":
        backbone = add_lora(backbone, finetune)
    return Classifier(backbone, model_cfg.pooling, pairwise, model_cfg.get("hidden_layer"))


def load_tokenizer(model_cfg: DictConfig, zoo_dir: str) -> PreTrainedTokenizerBase:
    source = zoo.resolve(model_cfg.path, zoo_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **source_options(model_cfg))
    except (OSError, ValueError) as err:
        raise _load_error(model_cfg, source, err) from err
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; the mask marks padding
        if tokenizer.eos_token is None:
            raise ModelError(
                f"model '{model_cfg.name}': the tokenizer in {source} has neither a pad nor an eos token, "
                "so batches cannot be padded. Add one and save it there (tokenizer.add_special_tokens("
                "{'pad_token': '<pad>'}); tokenizer.save_pretrained(folder)), or use another tokenizer."
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    # Questions and answers sit at the end of the formatted text: cut long texts on the left.
    tokenizer.truncation_side = "left"
    return tokenizer


# Tokenizers without a known limit report this sentinel (or larger) as model_max_length.
NO_LIMIT = 10**6


def usable_length(model_cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, zoo_dir: str) -> int:
    """``model_cfg.max_length``, or the model's own limit where that is lower: its position
    table (``max_position_embeddings``, GPT-2's ``n_positions``) and its tokenizer's
    ``model_max_length``. A longer text would index past the position table mid-training."""
    config = AutoConfig.from_pretrained(zoo.resolve(model_cfg.path, zoo_dir), **source_options(model_cfg))
    limits = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions")]
    limits.append(tokenizer.model_max_length if tokenizer.model_max_length < NO_LIMIT else None)
    limit = min((n for n in limits if n), default=model_cfg.max_length)
    if model_cfg.max_length > limit:
        log.warning(
            "model '%s': max_length=%d is more than its %d positions; texts are cut to %d tokens "
            "(set %s.max_length=%d to say so)",
            model_cfg.name,
            model_cfg.max_length,
            limit,
            limit,
            model_cfg.name,
            limit,
        )
        return limit
    return model_cfg.max_length


def check_loadable(model_cfg: DictConfig, zoo_dir: str) -> None:
    """Load ``model_cfg``'s config and tokenizer (seconds, no weights): a wrong path or an
    unusable tokenizer stops the run before any stage trains, not when its stage begins."""
    if model_cfg.get("image_size"):
        from w2s_lightning import vision

        return vision.check_loadable(model_cfg, zoo_dir)
    source = zoo.resolve(model_cfg.path, zoo_dir)
    try:
        AutoConfig.from_pretrained(source, **source_options(model_cfg))
    except (OSError, ValueError) as err:
        raise _load_error(model_cfg, source, err) from err
    load_tokenizer(model_cfg, zoo_dir)
