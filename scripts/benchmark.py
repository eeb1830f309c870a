"""Throughput of one fine-tuning stage, this project's against the reference's; and the wall time of a small
sweep under each Hydra launcher (`launchers`).

Each measurement trains one stage on ``--rows`` rows of a task's train split (one epoch,
batch 32 in micro-batches of 8 unless overridden) and predicts ``2 x --rows`` rows (half B
and test), then prints: examples/s, real and padded tokens/s, the share of padding, MFU
against a matmul peak measured on the spot, and peak RSS.

    python scripts/benchmark.py gpt2 .cache/bench/gpt2_124m        # a GPT-2-shaped 124M model, random weights
    python scripts/benchmark.py project mpnet_base                  # a zoo model (or a local folder)
    python scripts/benchmark.py project mpnet_base train.length_buckets=null   # ...with a lever off
    python scripts/benchmark.py reference .cache/bench/gpt2_124m --checkout ../weak-to-strong
    python scripts/benchmark.py suite .cache/bench/gpt2_124m --checkout ../weak-to-strong
    python scripts/benchmark.py launchers                           # one small sweep: basic vs local_parallel

``project`` runs the real stage code (``StageRunner``) with Hydra overrides after the model;
``reference`` runs openai/weak-to-strong's own ``train_model`` and ``eval_model_acc`` from a
checkout of it, on the same rows and tokenizer; ``suite`` runs the reference and every lever
on and off, each in a fresh process, one after another, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# The suite: each lever of the project's stage, on (the default) and off.
LEVERS = {
    "project (defaults)": [],
    "plain shuffle, no length buckets": ["train.length_buckets=null"],
    "AdamW as a for-loop (not fused)": ["train.adamw=for_loop"],
    "AdamW foreach (not fused)": ["train.adamw=foreach"],
    "predict micro-batch 8": ["weak.eval_batch_size=8"],
    "predict micro-batch 128": ["weak.eval_batch_size=128"],
    "train micro-batch 32 (no accumulation)": ["weak.minibatch_size=32"],
    "train micro-batches by tokens (256)": ["weak.minibatch_tokens=256"],
    "train micro-batches by tokens (512)": ["weak.minibatch_tokens=512"],
    "predict batches by tokens (1,024)": ["weak.eval_batch_tokens=1024"],
    "torch.compile": ["train.compile=true"],
    "eager attention (not SDPA)": ["weak.attn_implementation=eager"],
    "SDPA at every length (no eager training for short rows)": ["train.cpu_eager_attention_tokens=null"],
    "freed memory kept (2,048 MB)": ["cpu_heap_keep_mb=2048"],
    "train batches padded to a multiple of 8 tokens": ["train.pad_to_multiple_of=8"],
    "dense embedding gradients (a fresh one per micro-batch)": ["train.sparse_embedding_grad=false"],
    "GELU written out in Python (not fused)": ["train.fused_gelu=false"],
    "autocast casts the weights for every prediction batch": ["train.precast_predict_weights=false"],
    "predict with weights cast to bf16 once": ["train.predict_dtype=bfloat16"],
    # The opt-in settings for short texts on a bf16 CPU (docs/speed.md, "Eager attention in bf16").
    "eager attention, predict in bf16 weights": ["weak.attn_implementation=eager", "train.predict_dtype=bfloat16"],
    # The candidate bf16 default before sparse embedding gradients (slower than the defaults since).
    "padded to 8, train micro-batches by tokens (1,024)": ["train.pad_to_multiple_of=8", "weak.minibatch_tokens=1024"],
    "both, and train micro-batches by tokens (1,024)": [
        "cpu_heap_keep_mb=2048",
        "train.pad_to_multiple_of=8",
        "weak.minibatch_tokens=1024",
    ],
}


# ------------------------------------------------------------------ shared parts


def matmul_peak(dtype: torch.dtype, device: str = "cpu", size: int = 2048, repeats: int = 5, trials: int = 3) -> float:
    """FLOP/s of a ``size``-square matmul in ``dtype`` on ``device``, now: the best of
    ``trials`` timings (the least disturbed by anything else running)."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    started = time.perf_counter()
    a @ b  # warm-up
    if time.perf_counter() - started > 1:  # an emulated dtype (bf16 without bf16 units): one timing will do
        return 2 * size**3 / (time.perf_counter() - started)
    best = float("inf")
    for _ in range(trials):
        torch.cuda.synchronize() if device == "cuda" else None
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        torch.cuda.synchronize() if device == "cuda" else None
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 * repeats / best


def non_embedding_params(folder: str) -> int:
    """Parameters of the backbone that do matrix work per token (embedding tables excluded)."""
    from transformers import AutoConfig, AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return sum(p.numel() for p in model.parameters()) - embeddings


def compose(model: str, rows: int, task: str, overrides: list[str], out: Path):
    """The project's config for a one-stage benchmark of ``model`` (zoo name or folder)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import w2s_lightning.config  # noqa: F401  (resolvers)

    model_args = [f"model@weak={model}"]
    if Path(model).is_dir():  # any local decoder folder: GPT-2's entry, pointed at it
        model_args = ["model@weak=gpt2", f"weak.path={Path(model).resolve()}", f"weak.name={Path(model).name}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(
            "config",
            overrides=[
                "experiment=quickstart",
                f"task={task}",
                f"task.n_train={2 * rows}",
                "task.n_val=0",
                f"task.n_test={rows}",
                "train.epochs=1",
                "train.batch_size=32",
                *model_args,
                "weak.minibatch_size=8",
                "logger.mode=disabled",
                f"paths.output_dir={out}",
                f"paths.stage_dir={out / 'stages'}",
                *overrides,
            ],
        )


def report(name: str, figures: dict, params: int, precision: str, device: str = "cpu") -> dict:
    """Adds MFU (real tokens, 6N FLOPs a trained token, 2N a predicted one), peak RSS and, on a
    GPU, the peak of torch's GPU memory."""
    peak = matmul_peak(torch.bfloat16 if precision.startswith("bf16") else torch.float32, device)
    for phase, flops_per_token in (("train", 6), ("predict", 2)):
        if f"{phase}_tokens_per_s" in figures:
            figures[f"{phase}_mfu"] = flops_per_token * params * figures[f"{phase}_tokens_per_s"] / peak
    figures.update(
        name=name,
        precision=precision,
        matmul_peak_gflops=peak / 1e9,
        non_embedding_params=params,
        peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    )
    if device == "cuda":
        figures["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(figures))
    return figures


# ------------------------------------------------------------------ commands


# GPT-2's sizes (layers, width, heads), as the hub's configs give them; tiny is for smoke tests
# of the commands that read a model folder, not for figures.
GPT2_SIZES = {
    "tiny": (2, 64, 2),
    "small": (12, 768, 12),
    "medium": (24, 1024, 16),
    "large": (36, 1280, 20),
    "xl": (48, 1600, 25),
}


def make_gpt2(args) -> None:
    """A GPT-2-shaped model (``--size``: small is 12 layers, 768 wide, 12 heads) with random
    weights and the byte-level BPE tokenizer of ``--tokenizer`` (SmolLM2's from the offline zoo
    by default, in ``paths.zoo_dir=...`` when given)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from w2s_lightning import zoo

    given = [o.split("=", 1)[1] for o in args.overrides if o.startswith("paths.zoo_dir=")]
    zoo_dir = given[-1] if given else Path(os.environ.get("W2S_CACHE_DIR", ".cache/w2s")) / "zoo"  # as conf/paths
    source = args.tokenizer or zoo.resolve("zoo:smollm2_135m", str(zoo_dir))
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    layers, width, heads = GPT2_SIZES[args.size]
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(args.folder)
    tokenizer.save_pretrained(args.folder)
    print(f"wrote {args.folder}: {sum(p.numel() for p in GPT2LMHeadModel(config).parameters()) / 1e6:.1f}M parameters")


def project(args) -> dict:
    """One stage through the project's own stage code, in a fresh cache."""
    from w2s_lightning import preflight, tasks, zoo
    from w2s_lightning.methods import LABELLER, Rows, StageRequest
    from w2s_lightning.roles import WEAK
    from w2s_lightning.runner import StageRunner

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(args.model, args.rows, args.task, args.overrides, Path(tmp))
        preflight.check_config(cfg)  # what run.py refuses (a GPU trainer without a GPU, ...), refused here too
        splits = tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)
        request = StageRequest(
            WEAK,
            cfg.weak,
            rows=Rows("train_a"),
            loss=cfg.ground_truth_loss,
            predicts=tuple(n for n in LABELLER if len(splits[n])),
        )
        started = time.perf_counter()
        with (
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            if args.profile
            else nullcontext() as prof
        ):
            stage = StageRunner(cfg, splits).build(request, {})
        figures = {k: v for k, v in stage.metrics.items() if "per_s" in k or "padding" in k}
        if prof:
            figures.update(step_breakdown(prof.events()))
        figures.update(stage_seconds=time.perf_counter() - started, test_acc=stage.metrics["acc"])
        folder = zoo.resolve(cfg.weak.path, cfg.paths.zoo_dir)
        return report(
            args.name or f"project {' '.join(args.overrides)}".strip(),
            figures,
            non_embedding_params(folder),
            cfg.trainer.precision,
            "cuda" if cfg.trainer.accelerator == "gpu" else "cpu",
        )


def step_breakdown(events) -> dict:
    """Where a training step's time goes, from the labels ``StepTraining.training_step`` records
    (w2s.step, w2s.forward, w2s.backward, w2s.optimizer): each phase's share of the steps' time,
    and the time between steps (data, Lightning's loop, logging) as a share of steps plus gaps.
    Gaps that hold a validation (over 3x the median gap) count as neither."""
    spans: dict[str, list] = {}
    for event in events:
        if event.name.startswith("w2s."):
            spans.setdefault(event.name, []).append(event.time_range)
    steps = sorted(spans.get("w2s.step", []), key=lambda r: r.start)
    step_us = sum(r.elapsed_us() for r in steps)
    gaps = sorted(b.start - a.end for a, b in itertools.pairwise(steps))
    usual = [g for g in gaps if g <= 3 * gaps[len(gaps) // 2]] if gaps else [0]
    shares = {
        f"step_{phase}_share": sum(r.elapsed_us() for r in spans.get(f"w2s.{phase}", [])) / step_us
        for phase in ("forward", "backward", "optimizer")
    }
    shares["step_other_share"] = 1 - sum(shares.values())
    step_ms, gap_ms = step_us / len(steps) / 1e3, sum(usual) / len(usual) / 1e3
    shares.update(step_ms=step_ms, between_steps_ms=gap_ms, between_steps_share=gap_ms / (gap_ms + step_ms))
    return shares


def reference(args) -> dict:
    """openai/weak-to-strong's ``train_model`` and ``eval_model_acc`` on the same rows.

    Two shims let its modules import beside today's libraries; neither is on the measured
    path: ``torch_optimizer`` (Adafactor only) and ``load_sharded_checkpoint`` (gone from
    transformers 5, used only to reload saved sharded models)."""
    import datasets
    import transformers.modeling_utils

    from w2s_lightning import tasks

    sys.path.insert(0, str(Path(args.checkout).resolve()))
    sys.modules.setdefault("torch_optimizer", types.ModuleType("torch_optimizer"))
    if not hasattr(transformers.modeling_utils, "load_sharded_checkpoint"):
        transformers.modeling_utils.load_sharded_checkpoint = None
    import weak_to_strong.logger
    from weak_to_strong.common import get_tokenizer
    from weak_to_strong.datasets import tokenize_dataset
    from weak_to_strong.eval import eval_model_acc
    from weak_to_strong.loss import xent_loss
    from weak_to_strong.model import TransformerWithHead
    from weak_to_strong.train import train_model

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(args.model, args.rows, args.task, [], Path(tmp))
        splits = tasks.load_splits(cfg.task, cfg.paths.data_dir, cfg.seed)

    def as_reference(*names):
        rows = datasets.concatenate_datasets([splits[n] for n in names])
        return datasets.Dataset.from_dict(
            {
                "txt": rows["text"],
                "hard_label": rows["label"],
                "soft_label": [[1.0 - y, float(y)] for y in rows["label"]],
            }
        )

    tokenizer = get_tokenizer(args.model)
    train = tokenize_dataset(as_reference("train_a"), tokenizer, 1024)
    predict = tokenize_dataset(as_reference("train_b", "test"), tokenizer, 1024)
    weak_to_strong.logger.configure(name="benchmark")  # WANDB_PROJECT unset: logs nothing
    torch.manual_seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # as train_and_save_model: .to("cuda"), fp32
    model = TransformerWithHead.from_pretrained(args.model).to(device)

    started = time.perf_counter()
    # loss_fn as train_and_save_model passes it: train_model's default is the class, not a loss.
    train_model(
        model,
        train,
        batch_size=32,
        lr=cfg.weak.lr,
        loss_fn=xent_loss(),
        minibatch_size=8,
        epochs=1,
        eval_every=None,
        log_every=1000,
    )
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    results = eval_model_acc(model, predict, eval_batch_size=32)
    predict_seconds = time.perf_counter() - started

    def tokens(lengths, size):  # the reference pads each micro-batch, in row order, to its longest row
        batches = [lengths[i : i + size] for i in range(0, len(lengths), size)]
        return sum(lengths), sum(len(b) * max(b) for b in batches)

    figures = {}
    for phase, rows, size, seconds in (("train", train, 8, train_seconds), ("predict", predict, 32, predict_seconds)):
        real, padded = tokens([len(ids) for ids in rows["input_ids"]], size)
        figures.update(
            {
                f"{phase}_examples_per_s": len(rows) / seconds,
                f"{phase}_tokens_per_s": real / seconds,
                f"{phase}_padded_tokens_per_s": padded / seconds,
                f"{phase}_padding": 1 - real / padded,
            }
        )
    figures["test_acc"] = float(sum(results["acc"][len(splits["train_b"]) :]) / len(splits["test"]))
    return report("reference train_model (fp32)", figures, non_embedding_params(args.model), "32-true", device)


def suite(args) -> None:
    """The reference (when ``--checkout`` is given) and every lever, each in its own process,
    one at a time (two torch processes side by side slow each other down), then a table."""
    runs = []
    if args.checkout:
        check_checkout(args.checkout)
    known = {override for levers in LEVERS.values() for override in levers}
    unknown = [override for override in args.levers if override not in known]
    if unknown:  # else the suite would run without them and say nothing
        from w2s_lightning.errors import ConfigError

        raise ConfigError(
            f"no lever sets {', '.join(unknown)}. Levers are set by: {', '.join(sorted(known))}. "
            "Add a new one to LEVERS in scripts/benchmark.py, or time it with: "
            f"python scripts/benchmark.py project {args.model} {' '.join(unknown)}"
        )
    base = [sys.executable, __file__]
    common = ["--rows", str(args.rows), "--task", args.task]
    jobs = [
        (name, [*base, "project", args.model, *levers, *args.overrides, *common, "--name", name])
        for name, levers in LEVERS.items()
        if not levers or (any(o in levers for o in args.levers) if args.levers else args.all_levers)
    ]
    if args.checkout:
        jobs.insert(0, ("reference", [*base, "reference", args.model, *common, "--checkout", args.checkout]))
    for name, command in jobs * args.repeats:
        print(f"--- {name}", file=sys.stderr, flush=True)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"{name} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(table(runs))


# The sweep `launchers` times: 2 losses x 2 seeds of the offline default, smaller (--rows a half).
# Hydra runs the product in this order, so two parallel jobs first train two seeds' stages side by
# side, then the aux_conf transfers, which reuse them (--order seed-first pairs jobs that need the
# same ground-truth stages: one waits on the other's lock).
LAUNCHER_SWEEP = ["experiment=quickstart", "task.n_val=50", "loss=xent,aux_conf", "seed=0,1", "logger.mode=disabled"]
LAUNCHERS = {
    "basic": ("basic (one job at a time)", []),
    "local_parallel": ("local_parallel (2 jobs, 1 thread each)", ["hydra/launcher=local_parallel"]),
    "oversubscribed": (
        "local_parallel, threads=cores (torch's default)",
        ["hydra/launcher=local_parallel", f"threads={os.cpu_count()}"],
    ),
}


def launchers(args) -> None:
    """Wall time of one small offline sweep under each launcher, each in a fresh stage cache
    (the zoo's models are shared), one after another; then a markdown table."""
    rows, sizes = [], [f"task.n_train={2 * args.rows}", f"task.n_test={8 * args.rows // 5}"]
    sweep = (
        LAUNCHER_SWEEP
        if args.order == "loss-first"
        else [a for a in LAUNCHER_SWEEP if not a.startswith("loss=")] + ["loss=xent,aux_conf"]
    )
    for name, extra in (LAUNCHERS[key] for key in args.launchers):
        with tempfile.TemporaryDirectory() as tmp:
            command = [
                sys.executable,
                str(ROOT / "run.py"),
                "-m",
                *sweep,
                *sizes,
                f"paths.stage_dir={tmp}/stages",
                f"hydra.sweep.dir={tmp}/sweep",
                *extra,
                *args.overrides,
            ]
            print(f"--- {name}: {' '.join(command[2:])}", file=sys.stderr, flush=True)
            started = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode:
                print(f"{name} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                continue
            jobs = len(list(Path(tmp, "sweep").glob("*/results.json")))
            rows.append((name, jobs, seconds))
            print(f"{name}: {jobs} jobs in {seconds:.0f} s", file=sys.stderr, flush=True)
    base = rows[0][2] if rows and rows[0][0].startswith("basic") else None
    print("| launcher | jobs | wall time | vs basic |\n|---|---|---|---|")
    for name, jobs, seconds in rows:
        ratio = f"{seconds / base:.2f}x" if base else ""
        print(f"| {name} | {jobs} | {seconds / 60:.1f} min ({seconds:.0f} s) | {ratio} |")
    print(f"{os.cpu_count()} cores; each sweep: {' '.join(sweep)} {' '.join(sizes)}")


def check_checkout(folder: str) -> None:
    if not (Path(folder) / "weak_to_strong" / "train.py").is_file():
        print(
            f"error: --checkout {folder} is not a checkout of openai/weak-to-strong (no weak_to_strong/train.py "
            f"there). Clone it first: git clone https://github.com/openai/weak-to-strong {folder}",
            file=sys.stderr,
        )
        sys.exit(2)


def table(runs: list[dict]) -> str:
    """One row per run, each with its ratio to the reference's median; then, where a run was
    repeated, one row per setting: its median and range, and the ratio of the medians."""
    speeds = ("train_examples_per_s", "predict_examples_per_s")
    names = list(dict.fromkeys(r["name"] for r in runs))
    of = {name: [r for r in runs if r["name"] == name] for name in names}
    reference = next((of[n] for n in names if n.startswith("reference")), None)
    base = {k: statistics.median(r[k] for r in reference) for k in speeds} if reference else None

    def ratio(value: float, key: str) -> str:
        return f"{value / base[key]:.2f}x" if base else ""

    lines = [
        "| run | precision | train ex/s | vs ref | train tok/s (padded) | padding | train MFU "
        "| predict ex/s | vs ref | predict padding | peak RSS GB | test acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['name']} | {r['precision']} | {r['train_examples_per_s']:.2f} "
            f"| {ratio(r['train_examples_per_s'], speeds[0])} "
            f"| {r['train_tokens_per_s']:.0f} ({r['train_padded_tokens_per_s']:.0f}) | {r['train_padding']:.0%} "
            f"| {r['train_mfu']:.0%} | {r['predict_examples_per_s']:.1f} "
            f"| {ratio(r['predict_examples_per_s'], speeds[1])} "
            f"| {r['predict_padding']:.0%} | {r['peak_rss_gb']:.2f} | {r['test_acc']:.3f} |"
        )
    if len(runs) > len(names):
        lines += [
            "",
            "| setting (runs) | train ex/s: median (range) | vs ref | predict ex/s: median (range) | vs ref |",
            "|---|---|---|---|---|",
        ]
        for name, mine in of.items():
            cells = []
            for key in speeds:
                values = [r[key] for r in mine]
                middle = statistics.median(values)
                cells.append(f"{middle:.2f} ({min(values):.2f}-{max(values):.2f}) | {ratio(middle, key)}")
            lines.append(f"| {name} ({len(mine)}) | {' | '.join(cells)} |")
    lines.append(
        f"matmul peak measured on the spot: {runs[0]['matmul_peak_gflops']:.0f} GFLOP/s "
        f"({runs[0]['precision']}); MFU counts real tokens, {runs[0]['non_embedding_params'] / 1e6:.1f}M "
        "non-embedding parameters"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    gpt2 = commands.add_parser("gpt2", help="write a GPT-2-shaped model with random weights")
    gpt2.add_argument("folder")
    gpt2.add_argument("--size", choices=GPT2_SIZES, default="small", help="small (124M), medium (355M), ...")
    gpt2.add_argument("--tokenizer", help="a tokenizer folder (default: SmolLM2's byte-level BPE from the zoo)")
    gpt2.set_defaults(run=make_gpt2)
    timing = commands.add_parser("launchers", help="wall time of a small offline sweep under each launcher")
    timing.add_argument("--rows", type=int, default=250, help="rows in each training half (default 250)")
    timing.add_argument(
        "--launchers",
        nargs="+",
        choices=LAUNCHERS,
        default=list(LAUNCHERS),
        help="which to time (default: all, in this order)",
    )
    timing.add_argument(
        "--order",
        choices=["loss-first", "seed-first"],
        default="loss-first",
        help="the sweep's order: seed-first pairs jobs that share ground-truth stages",
    )
    timing.set_defaults(run=launchers)
    for name, run in (("project", project), ("reference", reference), ("suite", suite)):
        command = commands.add_parser(name)
        command.add_argument("model", help="a zoo model name (conf/model) or a local Hugging Face folder")
        command.add_argument("--rows", type=int, default=512, help="training rows; twice as many are predicted")
        command.add_argument("--task", default="sciq")
        command.add_argument("--name")
        command.add_argument("--checkout", help="a checkout of openai/weak-to-strong (reference, suite)")
        command.add_argument("--repeats", type=int, default=1, help="suite: run every job this many times")
        command.add_argument(
            "--profile",
            action="store_true",
            help="project: run under torch.profiler and split the training steps' time into forward, "
            "backward, optimizer and the rest (slower: read its shares, not its speed)",
        )
        command.add_argument(
            "--all-levers", action="store_true", help="suite: every lever off in turn, not only the defaults"
        )
        command.add_argument(
            "--levers",
            nargs="+",
            default=[],
            metavar="OVERRIDE",
            help="suite: only the levers these overrides set (e.g. train.length_buckets=null), beside the "
            "defaults; it narrows --all-levers",
        )
        command.set_defaults(run=run)
    # Hydra overrides of the project's stage (key=value) may come anywhere after the command.
    args, extra = parser.parse_known_args()
    args.overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if len(args.overrides) != len(extra):
        parser.error(f"unrecognized arguments: {' '.join(a for a in extra if a not in args.overrides)}")
    if args.command == "reference":
        check_checkout(args.checkout or "(none given)")
    from w2s_lightning.errors import W2SError

    try:
        args.run(args)
    except W2SError as err:  # the same one-line errors as run.py
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
