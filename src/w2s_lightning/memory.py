"""Giving memory back: what a stage, or a phase of one, no longer needs (docs/speed.md,
"Memory of make run"): a finished stage's model and optimizer, AdamW's moments once a stage
only predicts, and oneDNN's compiled kernels; and keeping, within a stage, what the next
micro-batch will allocate again, or not allocating it at all."""

from __future__ import annotations

import ctypes
import gc
import os
from contextlib import suppress

import lightning.pytorch as pl
import torch

KERNEL_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def limit_kernel_cache(capacity: int | None) -> None:
    """Hold at most ``capacity`` of oneDNN's compiled CPU kernels (matmuls for one shape
    each). Every new sequence length compiles new ones, and at oneDNN's default of 1,024 the
    cache held about 0.5 GB of a stage's peak. oneDNN reads the variable once, when it first
    runs a kernel, so this must come before any training; a value already in the environment
    wins, and None leaves oneDNN's default."""
    if capacity is not None:
        os.environ.setdefault(KERNEL_CACHE, str(capacity))


def keep_freed_memory(megabytes: int | None) -> None:
    """Let glibc serve blocks up to ``megabytes`` from its heap and keep up to that much freed
    memory there, rather than map each large block afresh and unmap it when freed. Every
    micro-batch frees and allocates the same large tensors again (the embedding's gradient:
    151 MB for a 49k-token vocabulary; autocast's bf16 copies of the weights), and each fresh
    mapping makes the kernel fault in and zero every page (docs/speed.md, "Freed memory kept,
    fewer shapes"). ``release_memory`` still gives it all back between stages. None leaves
    glibc's defaults; not glibc (macOS, musl): nothing to set."""
    if megabytes is None:
        return
    with suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        size = min(megabytes << 20, 2**31 - 1)  # mallopt takes an int
        libc.mallopt(M_MMAP_THRESHOLD, size)
        libc.mallopt(M_TRIM_THRESHOLD, size)


def sparse_embedding_gradients(model: torch.nn.Module) -> None:
    """Make every embedding of ``model`` return a sparse gradient: the rows a micro-batch
    touched, instead of a fresh vocabulary-sized one (151 MB for GPT-2) whose pages the kernel
    faults in and zeroes again every micro-batch (docs/speed.md, "Sparse embedding gradients").
    Autograd sums them over a step's micro-batches; ``densify_gradients`` hands AdamW one dense
    gradient a step."""
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.sparse = True


def densify_gradients(params, buffers: dict[torch.nn.Parameter, torch.Tensor]) -> None:
    """AdamW takes dense gradients: each sparse one among ``params`` is added into a dense
    buffer of ``buffers``, kept from step to step (its pages stay mapped), and becomes the
    parameter's gradient."""
    for param in params:
        if param.grad is None or not param.grad.is_sparse:
            continue
        buffer = buffers.get(param)
        if buffer is None:
            buffer = buffers[param] = torch.empty_like(param)
        param.grad = buffer.zero_().add_(param.grad)


def release_memory() -> None:
    """Give back what a built stage held (its model, gradients, AdamW state): Lightning and
    W&B keep it in reference cycles that only the cycle collector frees, and glibc keeps freed
    memory in its heaps unless asked to return it. Without this, the next stage's peak sits on
    top of the last one's."""
    gc.collect()
    with suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def drop_optimizer_state(trainer: pl.Trainer) -> None:
    """After fit, before predicting: AdamW's two moments (twice the weights' size) serve no
    prediction, and freeing them keeps the prediction's activations off the stage's peak."""
    for optimizer in trainer.optimizers:
        optimizer.state.clear()
