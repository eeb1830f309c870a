import pytest
import torch
from omegaconf import OmegaConf

from w2s_lightning.errors import ConfigError, ModelError
from w2s_lightning.models import load_classifier, load_tokenizer, pool_last, pool_mean


def test_pool_last_follows_the_mask_not_token_ids():
    hidden = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool_last(hidden, right).flatten().tolist() == [1.0, 7.0]
    assert pool_last(hidden, left).flatten().tolist() == [3.0, 7.0]


def test_pool_mean_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert pool_mean(hidden, torch.tensor([[1, 1, 0]])).item() == 2.0


@pytest.fixture
def llama_classifier(tiny_llama):
    torch.manual_seed(0)
    cfg = OmegaConf.create({"name": "tiny", "path": str(tiny_llama), "pooling": "last"})
    model = load_classifier(cfg, zoo_dir="unused").eval()
    torch.nn.init.normal_(model.head.weight)  # a non-zero head, so logits reveal the pooled state
    return model


def test_padding_and_token_id_zero_do_not_move_the_pooled_position(llama_classifier):
    text = torch.tensor([[5, 0, 7, 9, 0, 11]])  # id 0 inside the text: the reference cut here
    alone = llama_classifier(text, torch.ones_like(text))
    longer = torch.tensor([[4, 4, 4, 4, 4, 4, 4, 4]])
    pad = 2
    right_ids = torch.cat([torch.cat([text, torch.full((1, 2), pad)], 1), longer])
    right_mask = torch.cat([torch.tensor([[1] * 6 + [0] * 2]), torch.ones(1, 8, dtype=torch.long)])
    left_ids = torch.cat([torch.cat([torch.full((1, 2), pad), text], 1), longer])
    left_mask = torch.cat([torch.tensor([[0] * 2 + [1] * 6]), torch.ones(1, 8, dtype=torch.long)])
    with torch.no_grad():
        right = llama_classifier(right_ids, right_mask)[:1]
        left = llama_classifier(left_ids, left_mask)[:1]
        cut_at_first_zero = llama_classifier(text[:, :1], torch.ones(1, 1, dtype=torch.long))
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-4)  # RoPE: a shift changes nothing
    assert not torch.allclose(cut_at_first_zero, alone, atol=1e-3)


def test_head_starts_at_zero(tiny_bert):
    cfg = OmegaConf.create({"name": "tiny", "path": str(tiny_bert), "pooling": "mean"})
    model = load_classifier(cfg, zoo_dir="unused")
    tokenizer = load_tokenizer(cfg, zoo_dir="unused")
    batch = tokenizer(["a short text", "another, longer piece of text"], padding=True, return_tensors="pt")
    logits = model(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (2, 2) and torch.count_nonzero(logits) == 0
    assert tokenizer.padding_side == "right" and tokenizer.truncation_side == "left"


def test_unknown_pooling_and_missing_model_are_clear_errors(tiny_bert, tmp_path):
    with pytest.raises(ConfigError, match="pooling='max'.*first.*last.*mean"):
        load_classifier(OmegaConf.create({"name": "t", "path": str(tiny_bert), "pooling": "max"}), "unused")
    with pytest.raises(ModelError, match="zoo models.*minilm_l3"):
        load_classifier(OmegaConf.create({"name": "x", "path": "zoo:gpt5", "pooling": "last"}), str(tmp_path))
    with pytest.raises(ModelError, match="model 'nohub'.*cannot load 'org/not-a-model'"):
        load_classifier(
            OmegaConf.create({"name": "nohub", "path": "org/not-a-model", "pooling": "last"}), str(tmp_path)
        )


def test_hidden_layer_reads_the_layer_it_names(tiny_bert):
    cfg = OmegaConf.create({"name": "tiny", "path": str(tiny_bert), "pooling": "mean"})
    ids = torch.randint(1000, 2000, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    final = load_classifier(cfg, "unused", dropout=False).eval()
    layer = {
        i: load_classifier(OmegaConf.merge(cfg, {"hidden_layer": i}), "unused", dropout=False).eval()
        for i in (0, 1, 2, -1)
    }
    # The same backbone cut after its first layer: its output is what layer 1 names.
    cut = load_classifier(cfg, "unused", dropout=False).eval()
    cut.backbone.encoder.layer = cut.backbone.encoder.layer[:1]
    with torch.no_grad():
        pooled = {i: model.pool(ids, mask) for i, model in layer.items()}
        torch.testing.assert_close(pooled[1], cut.pool(ids, mask))
        torch.testing.assert_close(pooled[0], pool_mean(final.backbone.embeddings(input_ids=ids), mask))
        # BERT has no final norm: its last layer is its output, so 2, -1 and the default agree.
        torch.testing.assert_close(pooled[2], final.pool(ids, mask))
        torch.testing.assert_close(pooled[-1], pooled[2])
    assert not torch.allclose(pooled[1], pooled[2], atol=1e-3)
    with pytest.raises(ConfigError, match="hidden_layer=3 is outside this model's 2 layers"):
        load_classifier(OmegaConf.merge(cfg, {"hidden_layer": 3}), "unused")
