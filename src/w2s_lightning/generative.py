"""Generative fine-tuning: the strong model's own unsupervised objective on the task's
unlabeled text, before it learns to classify (the paper's third method).

Each model declares its objective (``objective: causal_lm`` for decoders, ``masked_lm`` for
encoders). The weights are saved as a Hugging Face folder that the classifier then loads in
place of the pretrained ones, for the ceiling and the transfer alike, so PGR stays
comparable.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import lightning.pytorch as pl
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, DataCollatorForLanguageModeling

from w2s_lightning.data import OptimizerSteps, shuffled, step_loader, tokenize
from w2s_lightning.models import load_pretrained, load_tokenizer, usable_length
from w2s_lightning.module import LanguageModelModule

# Texts the language model reads: the training pool only, never val or test.
UNLABELED_SPLITS = ("train_a", "train_b")


LM_CLASSES = {"causal_lm": AutoModelForCausalLM, "masked_lm": AutoModelForMaskedLM}


def unlabeled_texts(splits: datasets.DatasetDict) -> datasets.Dataset:
    """Every text of the training pool, as one ``text`` column: both dialogues of a reward
    modelling pair."""
    columns = [c for c in ("text", "text_b") if c in splits[UNLABELED_SPLITS[0]].column_names]
    parts = [splits[name].select_columns([column]) for name in UNLABELED_SPLITS for column in columns]
    return datasets.concatenate_datasets(
        [p if "text" in p.column_names else p.rename_column("text_b", "text") for p in parts]
    )


def finetune(
    cfg: DictConfig,
    model_cfg: DictConfig,
    options: dict,
    splits: datasets.DatasetDict,
    trainer: pl.Trainer,
    out: Path,
    per_step: int,
    ckpt_path: str | None = None,
) -> None:
    """Train ``model_cfg``'s language-model objective on the pool's texts for ``options``
    (lr, mlm_probability), in optimizer steps of ``per_step`` micro-batches, from ``ckpt_path``
    when a killed fit left one (resume.py); save to ``out/model``."""
    tokenizer = load_tokenizer(model_cfg, cfg.paths.zoo_dir)
    # Seeded: an encoder's MLM head is missing from the zoo's checkpoints and starts random.
    model = load_pretrained(
        LM_CLASSES[model_cfg.objective],
        model_cfg,
        cfg.paths.zoo_dir,
        seed=cfg.seed,
        dropout=cfg.train.dropout,
        fused_gelu=cfg.train.fused_gelu,
    )
    texts = unlabeled_texts(splits)
    tokenized = tokenize(texts, tokenizer, usable_length(model_cfg, tokenizer, cfg.paths.zoo_dir)).with_format("python")
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm=model_cfg.objective == "masked_lm", mlm_probability=options["mlm_probability"]
    )
    steps = OptimizerSteps(
        shuffled(len(tokenized), model_cfg.minibatch_size), per_step, cfg.seed, trainer.global_rank, trainer.world_size
    )
    loader = step_loader(tokenized, collator, steps)
    module = LanguageModelModule(
        model,
        lr=options["lr"] or model_cfg.lr,
        adamw=cfg.train.adamw,
        cpu_eager_attention_tokens=cfg.train.cpu_eager_attention_tokens,
    )
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=True)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
