"""GPU memory per device for the paper's models, computed from their sizes (not measured):
what fits on 1, 4 and 8 GPUs of 80 GB under finetune=full (one GPU, or trainer=gpu_fsdp over
4 or 8), under finetune=lora, each with and without gradient checkpointing.

    python scripts/memory_table.py            # the README's table
    python scripts/memory_table.py --gpu-gb 141 --tokens 512

The estimate, per device:
- full fine-tuning holds float32 weights, gradients and two AdamW moments: 16 bytes a
  parameter (preflight.BYTES_PER_TRAINED_PARAMETER), divided by the ranks under FSDP's full
  sharding, all of it on every rank under DDP;
- LoRA holds the frozen weights in bf16 (paper_nlp_lora: 2 bytes a parameter) and adapters
  whose state is under 1% of that;
- activations of one micro-batch (the model's minibatch_size, of --tokens tokens each) under
  bf16 autocast, per layer and token: 34 x width bytes for GPT-2's 4x-wide MLP (Korthikanti
  et al. 2022, "Reducing Activation Recomputation", without the attention scores that SDPA
  does not keep), the MLP's share scaled with its width for Qwen's; with gradient
  checkpointing, each layer's input (2 x width bytes) plus one layer recomputed.
A device fits a setting when the sum is within 90% of its memory (preflight.MEMORY_HEADROOM).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
BYTES_FULL, BYTES_LORA = 16, 2
HEADROOM = 0.9
# Layers, width and MLP width of each model, from its config.json on the hub.
ARCHITECTURE = {
    "gpt2": (12, 768, 3072),
    "gpt2-medium": (24, 1024, 4096),
    "gpt2-large": (36, 1280, 5120),
    "gpt2-xl": (48, 1600, 6400),
    "qwen2.5-0.5b": (24, 896, 4864),
    "qwen2.5-1.5b": (28, 1536, 8960),
    "qwen2.5-3b": (36, 2048, 11008),
    "qwen2.5-7b": (28, 3584, 18944),
}


def activation_bytes(name: str, micro_batch: int, tokens: int, checkpointing: bool) -> float:
    layers, width, mlp = ARCHITECTURE[name]
    per_token_layer = (15 + 19 * mlp / (4 * width)) * width  # attention and norms 15h, MLP 19h at 4h wide
    one_layer = per_token_layer * micro_batch * tokens
    if checkpointing:
        return 2 * width * micro_batch * tokens * layers + one_layer
    return one_layer * layers


def table(gpu_gb: float, tokens: int) -> str:
    budget = HEADROOM * gpu_gb * 1e9
    lines = [
        "| model | params | micro-batch | full, states per GPU: 1 / 4 / 8 GPUs | activations (GiB): plain / "
        "checkpointed | full fits on: plain | full fits on: checkpointed | lora fits on: plain / checkpointed |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fits(memory: dict[int, float], activations: float) -> str:
        smallest = next((n for n in (1, 4, 8) if memory[n] + activations <= budget), None)
        return f"{smallest} GPU{'s' if smallest > 1 else ''}" if smallest else "more than 8"

    for name in ARCHITECTURE:
        model = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
        params, micro_batch = float(model.params), int(model.get("minibatch_size", 32))
        acts = {ckpt: activation_bytes(name, micro_batch, tokens, ckpt) for ckpt in (False, True)}
        states = {n: BYTES_FULL * params / n for n in (1, 4, 8)}

        lora = {n: BYTES_LORA * params for n in (1, 4, 8)}  # LoRA here replicates (DDP)
        lines.append(
            f"| {name} | {params / 1e9:.2f}B | {micro_batch} | "
            + " / ".join(f"{states[n] / GIB:.1f}" for n in (1, 4, 8))
            + f" GiB | {acts[False] / GIB:.1f} / {acts[True] / GIB:.1f} | "
            + f"{fits(states, acts[False])} | {fits(states, acts[True])} | "
            + f"{fits(lora, acts[False])} / {fits(lora, acts[True])} |"
        )
    lines.append(
        f"\n{gpu_gb:g} GB GPUs, {HEADROOM:.0%} usable; micro-batches of {tokens} tokens (each model's "
        "minibatch_size in conf/model); 4 and 8 GPUs are trainer=gpu_fsdp (full sharding)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-gb", type=float, default=80, help="memory of one GPU, in GB (default 80)")
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per row (default: max_length, 1024)")
    args = parser.parse_args()
    print(table(args.gpu_gb, args.tokens))


if __name__ == "__main__":
    main()
