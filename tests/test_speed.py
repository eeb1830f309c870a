"""Speed levers that must not change results, the per-stage throughput figures, what a stage
gives back of its memory, and the benchmark script (its figures are measurements for the
README, never asserted here)."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file

from w2s_lightning import pipeline
from w2s_lightning.errors import ConfigError
from w2s_lightning.losses import XentLoss
from w2s_lightning.memory import KERNEL_CACHE, drop_optimizer_state, keep_freed_memory, limit_kernel_cache
from w2s_lightning.models import Classifier, load_classifier
from w2s_lightning.module import ADAMW_IMPLEMENTATIONS, W2SModule, adamw_schedule
from w2s_lightning.speed import Throughput

ROOT = Path(__file__).resolve().parents[1]


def test_every_adamw_implementation_makes_the_same_update():
    torch.manual_seed(0)
    start, inputs = torch.nn.Linear(16, 4), torch.randn(8, 16)
    weights = {}
    for name, kwargs in ADAMW_IMPLEMENTATIONS.items():
        model = torch.nn.Linear(16, 4)
        model.load_state_dict(start.state_dict())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, **kwargs)
        for _ in range(3):
            optimizer.zero_grad()
            model(inputs).square().mean().backward()
            optimizer.step()
        weights[name] = model.weight.detach()
    assert not torch.equal(weights["fused"], start.weight)
    for name in ("foreach", "for_loop"):
        torch.testing.assert_close(weights[name], weights["fused"])


def test_an_unknown_adamw_implementation_is_named():
    with pytest.raises(ConfigError, match="train.adamw='adam8bit' is unknown"):
        adamw_schedule(None, [torch.nn.Parameter(torch.zeros(1))], 1e-3, implementation="adam8bit")


class Regression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return (self.layer(inputs).squeeze(-1) - targets).square().mean()

    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0]).squeeze(-1)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def quiet_cpu_trainer(**options) -> pl.Trainer:
    """One epoch on the CPU, nothing logged, saved or shown."""
    return pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def test_a_fitted_stage_drops_adamw_state_and_predicts_the_same():
    torch.manual_seed(0)
    rows = torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randn(32))
    loader = torch.utils.data.DataLoader(rows, batch_size=8)
    module = Regression()
    trainer = quiet_cpu_trainer()
    trainer.fit(module, loader)
    (optimizer,) = trainer.optimizers
    assert len(optimizer.state) == 2  # weight and bias: each with its two moments
    before = torch.cat(trainer.predict(module, loader))
    drop_optimizer_state(trainer)
    assert not optimizer.state
    assert torch.equal(torch.cat(trainer.predict(module, loader)), before)


def fit_tiny_gpt2(**options) -> tuple[dict, dict, list[bool], list[str]]:
    """Three optimizer steps of a tiny GPT-2 classifier, four micro-batches of 12-token rows
    each, with W2SModule's ``options``: its weights before and after them, whether each backward
    pass left the token embedding's gradient sparse, and the attention implementation each
    training forward of the first layer ran with."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    backbone = GPT2Model(GPT2Config(vocab_size=500, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    assert backbone.config._attn_implementation == "sdpa"  # transformers' choice, which the lever replaces
    module = W2SModule(Classifier(backbone, "last"), XentLoss(), lr=1e-2, **options)
    before = {k: v.clone() for k, v in module.state_dict().items()}

    def micro_batch() -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 500, (4, 12))
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "target": torch.rand(4),
            "label": torch.randint(0, 2, (4,)),
            "real": torch.ones(4, dtype=torch.bool),
        }

    steps = [{"micro_batches": [micro_batch() for _ in range(4)], "shares": [0.25] * 4, "rows": 16} for _ in range(3)]
    sparse: list[bool] = []
    attention: list[str] = []

    class SeeGradient(pl.Callback):
        def on_after_backward(self, trainer, pl_module):
            sparse.append(backbone.wte.weight.grad.is_sparse)

    attn = backbone.h[0].attn
    attn.register_forward_pre_hook(lambda m, args: attention.append(m.config._attn_implementation))
    trainer = quiet_cpu_trainer(callbacks=[SeeGradient()])
    trainer.fit(module, torch.utils.data.DataLoader(steps, batch_size=None))
    assert not module.dense_grads  # the buffers go with the fit
    assert backbone.config._attn_implementation == "sdpa"  # given back after each micro-batch
    return before, module.state_dict(), sparse, attention


def test_sparse_embedding_gradients_make_the_same_update_as_dense_ones():
    """Gathered sparse over a step's micro-batches and made dense once before AdamW, the
    embedding's gradient updates every weight as the dense one does, to float rounding."""
    before, dense, dense_seen, _ = fit_tiny_gpt2(sparse_embedding_grad=False)
    _, sparse, sparse_seen, _ = fit_tiny_gpt2(sparse_embedding_grad=True)
    assert dense_seen == [False] * 12 and sparse_seen == [True] * 12
    assert not torch.allclose(dense["classifier.backbone.wte.weight"], before["classifier.backbone.wte.weight"])
    for name, weight in dense.items():
        torch.testing.assert_close(sparse[name], weight, rtol=1e-5, atol=1e-6, msg=name)


def test_short_rows_train_with_eager_attention_to_the_same_update_as_sdpa():
    """train.cpu_eager_attention_tokens: a CPU micro-batch of rows no longer than the limit
    trains (forward and backward) with eager attention, a longer one with SDPA; the model's
    choice comes back after each micro-batch, and the update is SDPA's to float rounding."""
    before, sdpa, _, sdpa_seen = fit_tiny_gpt2(cpu_eager_attention_tokens=None)
    _, eager, _, eager_seen = fit_tiny_gpt2(cpu_eager_attention_tokens=12)
    _, _, _, long_seen = fit_tiny_gpt2(cpu_eager_attention_tokens=11)
    assert eager_seen == ["eager"] * 12 and sdpa_seen == long_seen == ["sdpa"] * 12
    assert not torch.allclose(
        sdpa["classifier.backbone.h.0.attn.c_attn.weight"], before["classifier.backbone.h.0.attn.c_attn.weight"]
    )
    for name, weight in sdpa.items():
        torch.testing.assert_close(eager[name], weight, rtol=1e-5, atol=1e-6, msg=name)


def test_a_fused_gelu_computes_what_gpt2s_python_gelu_does(tmp_path):
    """train.fused_gelu swaps GPT-2's Python GELU for PyTorch's one-kernel form: every one of
    them, and the logits and gradients stay those of the written-out formula."""
    from omegaconf import OmegaConf
    from transformers import GPT2Config, GPT2Model
    from transformers.activations import GELUTanh, NewGELUActivation

    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=500, n_positions=32, n_embd=32, n_layer=3, n_head=2)).save_pretrained(tmp_path)
    model_cfg = OmegaConf.create({"name": "tiny_gpt2", "path": str(tmp_path), "pooling": "last"})
    ids, head = torch.randint(0, 500, (4, 12)), torch.randn(2, 32)
    results = {}
    for fused in (False, True):
        classifier = load_classifier(model_cfg, str(tmp_path), seed=0, fused_gelu=fused)
        with torch.no_grad():  # the head starts at zero: logits and gradients would be too
            classifier.head.weight.copy_(head.view_as(classifier.head.weight))
        activations = [m for m in classifier.modules() if isinstance(m, GELUTanh | NewGELUActivation)]
        assert [type(m) for m in activations] == [GELUTanh if fused else NewGELUActivation] * 3
        x = torch.linspace(-6, 6, 1001)  # wide: at init the MLPs see inputs near 0, where GELUs agree
        for activation in activations:  # exact GELU would be 5e-4 away: not the same function
            torch.testing.assert_close(activation(x), NewGELUActivation()(x), rtol=0, atol=1e-6)
        logits = classifier(input_ids=ids, attention_mask=torch.ones_like(ids))
        logits.sum().backward()
        results[fused] = logits, {n: p.grad for n, p in classifier.named_parameters()}
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-6)
    assert results[False][1]["backbone.h.0.mlp.c_fc.weight"].abs().sum() > 0
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_predicting_in_bf16_weights_casts_once_and_predicts_within_rounding():
    """train.predict_dtype=bfloat16 casts the weights when prediction starts (autocast then has
    nothing left to cast); P(label=1) moves by bf16 rounding only. A name that is no dtype is
    refused before any training."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    backbone = GPT2Model(GPT2Config(vocab_size=500, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    classifier = Classifier(backbone, "last")
    with torch.no_grad():  # the head starts at zero: every prediction would be 0.5
        classifier.head.weight.normal_()
    ids = torch.randint(0, 500, (4, 8, 12))
    batches = [{"input_ids": i, "attention_mask": torch.ones_like(i)} for i in ids]
    predicted = {}
    for dtype in (None, "bfloat16"):
        module = W2SModule(classifier, XentLoss(), lr=1e-3, predict_dtype=dtype)
        trainer = quiet_cpu_trainer(precision="bf16-mixed")
        predicted[dtype] = torch.cat(trainer.predict(module, torch.utils.data.DataLoader(batches, batch_size=None)))
        assert {p.dtype for p in classifier.parameters()} == {torch.bfloat16 if dtype else torch.float32}
    assert predicted[None].dtype == predicted["bfloat16"].dtype == torch.float32
    assert predicted[None].std() > 0.05  # predictions that differ, so the comparison can fail
    torch.testing.assert_close(predicted["bfloat16"], predicted[None], rtol=0, atol=0.02)
    for name in ("bf16", "int8"):
        with pytest.raises(ConfigError, match=f"train.predict_dtype='{name}' is not a floating-point torch dtype"):
            W2SModule(classifier, XentLoss(), lr=1e-3, predict_dtype=name)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_weights_cast_once_for_prediction_predict_the_same_bit_for_bit(family):
    """train.precast_predict_weights casts, when prediction starts under bf16-mixed, the weights
    autocast casts at every call (GPT-2's Conv1D, BERT's and the head's Linear layers), not the
    embeddings and layer norms it runs in float32: the predictions are the same to the bit.
    Under 32-true nothing is cast."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    torch.manual_seed(0)
    if family == "gpt2":
        backbone = GPT2Model(GPT2Config(vocab_size=500, n_positions=32, n_embd=32, n_layer=2, n_head=2))
        matmul, float32 = "backbone.h.0.attn.c_attn.weight", ["backbone.wte.weight", "backbone.h.0.ln_1.weight"]
    else:
        backbone = BertModel(
            BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        )
        matmul = "backbone.encoder.layer.0.attention.self.query.weight"
        float32 = ["backbone.embeddings.word_embeddings.weight", "backbone.embeddings.LayerNorm.weight"]
    classifier = Classifier(backbone, "last" if family == "gpt2" else "first")
    with torch.no_grad():  # the head starts at zero: every prediction would be 0.5
        classifier.head.weight.normal_()
    ids = torch.randint(0, 500, (4, 8, 12))
    batches = [{"input_ids": i, "attention_mask": torch.ones_like(i)} for i in ids]
    predicted = {}
    for precision, precast in (("32-true", True), ("bf16-mixed", False), ("bf16-mixed", True)):
        module = W2SModule(classifier, XentLoss(), lr=1e-3, precast_predict_weights=precast)
        trainer = quiet_cpu_trainer(precision=precision)
        predicted[precision, precast] = torch.cat(
            trainer.predict(module, torch.utils.data.DataLoader(batches, batch_size=None))
        )
        dtypes = {name: p.dtype for name, p in classifier.named_parameters()}
        cast = precision == "bf16-mixed" and precast
        assert dtypes[matmul] == dtypes["head.weight"] == (torch.bfloat16 if cast else torch.float32)
        assert all(dtypes[name] == torch.float32 for name in float32)
    assert predicted["bf16-mixed", False].std() > 0.05  # predictions that differ, so equality can fail
    assert not torch.equal(predicted["bf16-mixed", False], predicted["32-true", True])  # bf16 rounds
    assert torch.equal(predicted["bf16-mixed", True], predicted["bf16-mixed", False])


def test_the_kernel_cache_limit_yields_to_the_environment(monkeypatch):
    monkeypatch.delenv(KERNEL_CACHE, raising=False)
    limit_kernel_cache(None)
    assert KERNEL_CACHE not in os.environ  # oneDNN's own default
    limit_kernel_cache(64)
    assert os.environ[KERNEL_CACHE] == "64"
    monkeypatch.setenv(KERNEL_CACHE, "8")
    limit_kernel_cache(64)
    assert os.environ[KERNEL_CACHE] == "8"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_up_to_the_limit_is_reused_without_page_faults():
    """A block under the limit comes back from the heap, its pages already mapped; one over it
    is mapped afresh, and the kernel faults in every page again."""
    pages = (160 << 20) // resource.getpagesize()

    def faults_of_a_160_mb_block() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = bytearray(160 << 20)  # zero-filled: every page touched
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    keep_freed_memory(100)
    assert min(faults_of_a_160_mb_block() for _ in range(2)) > 0.9 * pages
    keep_freed_memory(2048)  # this worker keeps it: it changes memory held, never a result
    faults_of_a_160_mb_block()  # the heap grows once
    assert faults_of_a_160_mb_block() < 0.1 * pages


def test_throughput_counts_real_and_padded_tokens():
    speed = Throughput()
    for mask in ([[1, 1, 1, 0], [1, 1, 1, 1]], [[1, 0], [1, 1]]):  # 7 of 8, then 3 of 4 tokens are real
        speed._count("train", {"label": torch.zeros(2), "attention_mask": torch.tensor(mask)})
    speed.seconds["train"] = 2.0
    figures = speed.metrics()
    assert figures["train_examples_per_s"] == 2.0 and figures["train_tokens_per_s"] == 5.0
    assert figures["train_padded_tokens_per_s"] == 6.0 and figures["train_padding"] == pytest.approx(2 / 12)
    assert not any(k.startswith("predict") for k in figures)  # nothing predicted, nothing reported


def test_benchmark_table_gives_each_run_its_ratio_to_the_reference():
    sys.path.insert(0, str(ROOT / "scripts"))
    from benchmark import table

    def run(name, train, predict):
        return dict(
            name=name,
            precision="32-true",
            train_examples_per_s=train,
            predict_examples_per_s=predict,
            train_tokens_per_s=1,
            train_padded_tokens_per_s=2,
            train_padding=0.5,
            train_mfu=0.1,
            predict_padding=0.2,
            peak_rss_gb=1.0,
            test_acc=0.5,
            matmul_peak_gflops=100,
            non_embedding_params=85e6,
        )

    rows = table([run("reference train_model (fp32)", 4.0, 10.0), run("project", 6.0, 25.0)]).splitlines()
    assert "| 1.00x |" in rows[2] and "| 1.50x |" in rows[3] and "| 2.50x |" in rows[3]
    assert len(rows) == 5  # one run of each: no summary
    # Repeated runs: each against the reference's median (4.0), then medians and ranges
    reference = [run("reference train_model (fp32)", v, 10.0) for v in (3.0, 4.0, 9.0)]
    rows = table([*reference, *(run("project", v, 40.0) for v in (12.0, 14.0, 30.0))]).splitlines()
    assert "| 3.00x |" in rows[5] and "| 7.50x |" in rows[7]
    assert "| project (3) | 14.00 (12.00-30.00) | 3.50x | 40.00 (40.00-40.00) | 4.00x |" in rows


def test_the_suite_refuses_a_lever_it_does_not_have(tmp_path):
    """An override no lever sets stops the suite before anything runs, naming the fix: it used to
    run the defaults alone and say nothing."""
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "suite", str(tmp_path), "--levers", "weak.minibatch_size=16"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and not done.stdout
    assert "no lever sets weak.minibatch_size=16" in done.stderr and "weak.minibatch_size=32" in done.stderr


@pytest.mark.slow
def test_token_budgets_and_padding_multiples_compute_what_plain_batches_do(make_cfg, tiny_overrides, tmp_path):
    """A token budget cuts each optimizer step's rows (and each prediction batch) anew, and a
    padding multiple adds masked tokens: the steps, and so the updates, are the same; only float
    sums are ordered otherwise. The budget is in the stage key; the padding multiple is not."""
    by_rows = pipeline.run(make_cfg(*tiny_overrides, f"paths.output_dir={tmp_path / 'rows'}"))
    budgets = [
        f"{model}.{key}" for model in ("weak", "strong") for key in ("minibatch_tokens=160", "eval_batch_tokens=400")
    ]
    by_tokens = pipeline.run(make_cfg(*tiny_overrides, *budgets, f"paths.output_dir={tmp_path / 'tokens'}"))
    padded = pipeline.run(  # its own cache: its stages have the plain batches' keys
        make_cfg(
            *tiny_overrides,
            "train.pad_to_multiple_of=16",
            f"paths.output_dir={tmp_path / 'padded'}",
            f"paths.cache_dir={tmp_path / 'padded_cache'}",
        )
    )
    for other, keyed in ((by_tokens, True), (padded, False)):
        worst = 0.0
        for role in ("weak", "ceiling", "transfer"):
            assert (other["stages"][role]["key"] != by_rows["stages"][role]["key"]) == keyed
            rows, others = (
                load_file(f"{run['stages'][role]['path']}/predictions.safetensors") for run in (by_rows, other)
            )
            worst = max(worst, *((rows[split] - others[split]).abs().max().item() for split in rows))
        print(f"largest difference in P(label=1), {'tokens' if keyed else 'padded'} against plain: {worst:.2e}")
        assert worst < 1e-5  # float32 rounding grown over a few dozen steps, as across DDP ranks (test_parallel.py)
    runs = {"rows": by_rows, "tokens": by_tokens, "padded": padded}
    ceiling = {name: run["stages"]["ceiling"] for name, run in runs.items()}
    for phase in ("train", "predict"):  # the budget cut rows of similar length
        assert ceiling["tokens"][f"{phase}_padding"] < ceiling["rows"][f"{phase}_padding"]
    # the multiple pads training micro-batches only
    assert ceiling["padded"]["train_padding"] > ceiling["rows"]["train_padding"]
    assert ceiling["padded"]["predict_padding"] == ceiling["rows"]["predict_padding"]


@pytest.mark.slow
def test_benchmark_measures_one_stage_of_a_local_model(tiny_llama, zoo_dir):
    done = subprocess.run(
        [
            sys.executable,
            "scripts/benchmark.py",
            "project",
            str(tiny_llama),
            "--rows",
            "64",
            "--profile",
            f"paths.zoo_dir={zoo_dir}",
            "weak.max_length=64",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["train_examples_per_s"] > 0 and figures["predict_examples_per_s"] > 0
    assert 0 <= figures["train_padding"] < 1 and 0 < figures["train_mfu"] < 1
    assert figures["peak_rss_gb"] > 0 and figures["non_embedding_params"] > 0
    # Two steps, profiled: each phase took time, and the phases lie within the step.
    assert all(figures[f"step_{phase}_share"] > 0 for phase in ("forward", "backward", "optimizer"))
    assert figures["step_other_share"] >= 0 and figures["step_ms"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check would run on this GPU")
def test_the_gpu_check_stops_at_once_with_one_clear_line_where_there_is_no_gpu():
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"gpu_check: no CUDA GPU visible to {sys.executable}'s torch; this check needs one (run it where a GPU is lent)"
    )
    assert not done.stdout
