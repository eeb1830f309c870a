"""What would silently skew PGR: half-precision master weights, dropout and checkpointing,
unseeded inits, stage keys that miss settings, selection that moves PGR's end points, and
ladders that cross model families."""

import itertools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from transformers import AutoModel, AutoModelForMaskedLM, LlamaConfig

from w2s_lightning import methods, preflight, tasks
from w2s_lightning.errors import ConfigError
from w2s_lightning.losses import XentLoss
from w2s_lightning.models import load_classifier, load_pretrained
from w2s_lightning.module import W2SModule
from w2s_lightning.runner import StageRunner


def model_cfg(folder: Path, **extra):
    return OmegaConf.create(
        {
            "name": folder.name,
            "path": str(folder),
            "pooling": "last",
            "dtype": None,
            "gradient_checkpointing": False,
            **extra,
        }
    )


def fit(classifier: torch.nn.Module, steps: int, lr: float = 1e-5, precision: str = "32-true") -> None:
    """A real Lightning fit of ``steps`` optimizer steps on random token batches."""
    generator = torch.Generator().manual_seed(0)
    batches = [  # optimizer steps of one micro-batch each (data.OptimizerSteps)
        {
            "micro_batches": [
                {
                    "input_ids": torch.randint(5, 1000, (4, 12), generator=generator),
                    "attention_mask": torch.ones(4, 12, dtype=torch.long),
                    "target": torch.tensor([0.0, 1.0, 1.0, 0.0]),
                }
            ],
            "shares": [1.0],
            "rows": 4,
        }
        for _ in range(steps)
    ]
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        W2SModule(classifier, XentLoss(), lr=lr, lr_scheduler="constant"),
        train_dataloaders=DataLoader(batches, batch_size=None),
    )


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory) -> Path:
    """A tiny Llama saved in bfloat16, its config declaring bfloat16 (as Qwen2.5's does)."""
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        dtype="bfloat16",
    )
    folder = tmp_path_factory.mktemp("bf16") / "tiny-bf16-llama"
    AutoModel.from_config(config).to(torch.bfloat16).save_pretrained(folder)
    return folder


def test_a_bf16_checkpoint_trains_on_float32_master_weights_and_its_norms_move(bf16_llama):
    classifier = load_classifier(model_cfg(bf16_llama), zoo_dir="unused", dropout=False)
    assert {p.dtype for p in classifier.parameters()} == {torch.float32}  # dtype: null means float32
    before = {n: p.detach().clone() for n, p in classifier.named_parameters()}
    fit(classifier, steps=3, lr=1e-5, precision="bf16-mixed")
    after = dict(classifier.named_parameters())
    norms = [n for n in before if "norm" in n]
    assert norms and all(not torch.equal(before[n], after[n]) for n in norms)  # a 1e-5 step moves a 1.0 weight
    unchanged = [n for n in before if torch.equal(before[n], after[n]) and "embed_tokens" not in n]
    assert unchanged == []  # every layer learns (rows of unseen tokens aside)


def test_half_precision_weights_are_refused_for_full_fine_tuning(make_cfg):
    with pytest.raises(ConfigError, match="trains every weight and needs float32 master weights"):
        preflight.check_config(make_cfg("strong.dtype=bfloat16"))
    preflight.check_config(make_cfg("strong.dtype=bfloat16", "finetune=lora"))  # a frozen backbone may be bf16
    with pytest.raises(
        ConfigError, match="generative trains every weight"
    ):  # generative fine-tuning trains every weight
        preflight.check_config(make_cfg("strong.dtype=bfloat16", "finetune=lora", "method=generative"))


def test_paper_models_load_in_float32_for_full_fine_tuning():
    for path in Path(CONF_DIR, "model").glob("*.yaml"):
        assert OmegaConf.load(path).get("dtype") is None, path.name


@pytest.mark.parametrize("checkpointing", [True, False])
def test_gradient_checkpointing_recomputes_layers_during_training(tiny_llama, checkpointing):
    classifier = load_classifier(model_cfg(tiny_llama, gradient_checkpointing=checkpointing), "unused", dropout=False)
    calls = []
    # A pre-hook: the recompute stops early, once it has what the backward pass needs.
    classifier.backbone.layers[0].mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    fit(classifier, steps=1)
    # Checkpointing runs each layer again in the backward pass, from its saved input.
    assert len(calls) == (2 if checkpointing else 1)


def test_dropout_is_off_in_training_mode_when_the_recipe_says_so(tiny_bert):
    ids = torch.randint(5, 1000, (2, 10))
    mask = torch.ones_like(ids)
    for dropout, same in ((False, True), (True, False)):
        classifier = load_classifier(model_cfg(tiny_bert, pooling="mean"), "unused", dropout=dropout).train()
        first, second = (classifier.pool(ids, mask) for _ in range(2))
        assert torch.equal(first, second) == same


def perturbed_rng_then(load, rng_state: int):
    """``load()`` after the global RNG was moved to ``rng_state``, as earlier stages (or none,
    when they were cache hits) leave it."""
    torch.manual_seed(rng_state)
    torch.rand(rng_state + 1)
    return load()


def test_lora_init_depends_on_the_seed_only(tiny_llama):
    lora = OmegaConf.load(Path(CONF_DIR, "finetune", "lora.yaml"))

    def lora_a(seed: int, rng_state: int) -> torch.Tensor:
        classifier = perturbed_rng_then(
            lambda: load_classifier(model_cfg(tiny_llama), "unused", lora, seed=seed), rng_state
        )
        return torch.cat([p.flatten() for n, p in classifier.named_parameters() if "lora_A" in n])

    assert torch.equal(lora_a(0, rng_state=1), lora_a(0, rng_state=2))
    assert not torch.equal(lora_a(0, rng_state=1), lora_a(1, rng_state=1))


def test_masked_lm_head_init_depends_on_the_seed_only(tiny_bert):
    """The tiny BERT is saved without an MLM head (as the zoo's encoders), so it starts random."""

    def head(seed: int, rng_state: int) -> torch.Tensor:
        model = perturbed_rng_then(
            lambda: load_pretrained(AutoModelForMaskedLM, model_cfg(tiny_bert), "unused", seed=seed), rng_state
        )
        return model.cls.predictions.transform.dense.weight.detach().clone()

    assert torch.equal(head(0, rng_state=1), head(0, rng_state=2))
    assert not torch.equal(head(0, rng_state=1), head(1, rng_state=1))


@pytest.mark.slow
def test_validation_schedule_does_not_change_a_ground_truth_stage(make_cfg, tiny_overrides, tmp_path):
    """Why val_every may stay out of a weak model's key: validation no longer shifts the training order."""
    weak = {}
    for every in (0.5, 0.25):
        cfg = make_cfg(*tiny_overrides, f"select.val_every={every}", f"paths.cache_dir={tmp_path / str(every)}")
        weak_model = methods.direct(cfg)[:1]
        weak[every] = StageRunner(cfg, tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)).run(weak_model)
    weak = {every: built["weak"].predictions for every, built in weak.items()}
    assert all(torch.equal(weak[0.5][split], weak[0.25][split]) for split in weak[0.5])


def test_paper_nlp_pairs_models_of_one_family_only():
    run = []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for name in ("paper_nlp", "paper_nlp_7b"):  # one GPU per job; the 7B students on 4
            preset = compose(config_name="config", overrides=[f"experiment={name}"], return_hydra_config=True)
            params = preset.hydra.sweeper.params
            # each side composed once per model, then paired: the two groups are independent
            # (composing each of the 49 + 3 pairs took 20 s)
            sides = {}
            for side in ("weak", "strong"):
                models = params[f"model@{side}"].split(",")
                overrides = [[f"experiment={name}", f"model@{side}={model}"] for model in models]
                sides[side] = [compose(config_name="config", overrides=each)[side] for each in overrides]
            cfg = preset.copy()  # one pair at a time: skip_reason reads the two models and the ladder
            for weak, strong in itertools.product(sides["weak"], sides["strong"]):
                cfg.weak, cfg.strong = weak, strong
                if preflight.skip_reason(cfg, sweep=True) is None:
                    run.append((cfg.weak.name, cfg.strong.name))
    assert len(run) == len(set(run)) == 12  # C(4,2) GPT-2 pairs + C(4,2) Qwen pairs, each once
    assert all(weak.split("-")[0][:4] == strong.split("-")[0][:4] for weak, strong in run)
    assert {strong for _, strong in run} >= {"gpt2-xl", "qwen2.5-7b"}


def test_the_offline_ladder_sweeps_across_the_zoo_families(make_cfg):
    """The offline zoo has no family with three sizes: its ladder pairs across families. Other
    presets sweep no models, so the family rule does not apply to them (config.in_ladder_sweep)."""
    cfg = make_cfg("experiment=offline_ladder")
    assert cfg.weak.family != cfg.strong.family and preflight.skip_reason(cfg, sweep=True) is None
    assert preflight.skip_reason(make_cfg(), sweep=True).startswith("minilm_l3 (minilm) and mpnet_base")
    assert preflight.skip_reason(make_cfg(), sweep=False) is None


def test_the_offline_causal_ladder_runs_every_smaller_rung_under_every_larger_one():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        preset = compose(config_name="config", overrides=["experiment=offline_causal"], return_hydra_config=True)
        params = preset.hydra.sweeper.params
        assert params["seed"] == "0,1,2" and params["loss"] == "xent,aux_conf" and preset.finetune.name == "probe"
        run = []
        for weak, strong in itertools.product(params["model@weak"].split(","), params["model@strong"].split(",")):
            cfg = compose(
                config_name="config",
                overrides=["experiment=offline_causal", f"model@weak={weak}", f"model@strong={strong}"],
            )
            preflight.check_config(cfg)
            if preflight.skip_reason(cfg, sweep=True) is None:
                run.append((cfg.weak.params, cfg.strong.params))
    sizes = sorted({size for pair in run for size in pair})
    assert len(sizes) == 4 and sorted(run) == sorted(itertools.combinations(sizes, 2))  # all 6 pairs, smaller -> larger
