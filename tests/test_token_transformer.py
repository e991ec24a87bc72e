"""The shared token Transformer: causality, padding exactness, layers and presets."""

from __future__ import annotations

import pytest
import torch

from w2vtools.models.token_transformer import TokenTransformer, TokenTransformerConfig, token_transformer_preset


def _model(causal: bool, **kw) -> TokenTransformer:
    torch.manual_seed(0)
    return TokenTransformer(token_transformer_preset("tiny", 20, causal=causal, **kw)).eval()


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_causal_model_does_not_see_the_future(layer_norm_first):
    model = _model(True, layer_norm_first=layer_norm_first)
    a = torch.tensor([[4, 5, 6, 7, 8]])
    b = a.clone()
    b[0, 3:] = torch.tensor([9, 10])
    la, lb = model(a)["logits"], model(b)["logits"]
    assert torch.allclose(la[:, :3], lb[:, :3], atol=1e-6)
    assert not torch.allclose(la[:, 3:], lb[:, 3:], atol=1e-3)


def test_bidirectional_model_sees_both_sides():
    model = _model(False)
    a = torch.tensor([[4, 5, 6, 7, 8]])
    b = a.clone()
    b[0, 4] = 9
    assert not torch.allclose(model(a)["hidden"][:, 0], model(b)["hidden"][:, 0], atol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_padded_batch_equals_each_sequence_alone(causal):
    model = _model(causal)
    seqs = [[4, 5, 6, 7, 8, 9], [10, 11, 12]]
    pad = model.cfg.padding_idx
    tokens = torch.tensor([s + [pad] * (6 - len(s)) for s in seqs])
    out = model(tokens, tokens.eq(pad))
    for i, s in enumerate(seqs):
        alone = model(torch.tensor([s]))
        assert torch.allclose(out["logits"][i, : len(s)], alone["logits"][0], atol=1e-5)


def test_layers_and_features():
    model = _model(False)
    tokens = torch.tensor([[4, 5, 6]])
    out = model(tokens, return_all=True)
    assert len(out["layers"]) == model.num_layers + 1
    assert torch.equal(model.features(tokens, layer=1), out["layers"][1])
    assert torch.equal(model.features(tokens, layer=0), out["layers"][0])
    assert "logits" not in model(tokens, layer=1)
    with pytest.raises(ValueError, match="layer 3"):
        model(tokens, layer=3)


def test_output_projection_is_tied_to_the_embeddings():
    model = _model(True)
    assert model.lm_head.weight is model.embed_tokens.weight
    names = set(model.state_dict())
    assert {"embed_tokens.weight", "embed_positions.weight", "layernorm_embedding.weight",
            "layers.1.self_attn.q_proj.weight", "lm_head.dense.weight", "lm_head.bias"} <= names


def test_positions_follow_fairseq_padding_offset():
    model = _model(False)
    mask = torch.tensor([[False, False, True]])
    assert model.positions(mask, 1, 3, torch.device("cpu")).tolist() == [[2, 3, 1]]
    assert model.positions(None, 1, 3, torch.device("cpu")).tolist() == [[2, 3, 4]]


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="divisible"):
        TokenTransformerConfig(vocab_size=10, embed_dim=10, attention_heads=3)
    with pytest.raises(ValueError, match="unknown token Transformer preset 'huge'"):
        token_transformer_preset("huge", 10)
    with pytest.raises(ValueError, match="max_positions"):
        _model(True, max_positions=4)(torch.tensor([[4, 5, 6, 7, 8]]))
