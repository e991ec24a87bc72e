"""A Transformer over token sequences: BERT on speech units, or a causal LM on text.

One model serves both token models of the wav2vec papers:

* vq-wav2vec's BERT (Baevski et al., 2020): a RoBERTa encoder trained with span
  masking on the quantized units (``causal=False``);
* the Transformer LM that rescores n-best lists (wav2vec 2.0; Xu et al., 2021,
  self-training) (``causal=True``).

Parameter names follow fairseq RoBERTa (``encoder.sentence_encoder.*`` and
``encoder.lm_head.*``) without those prefixes, so a fairseq state dict loads after
renaming prefixes only:

* ``embed_tokens.weight``; ``embed_positions.weight``: learned positions with
  fairseq's padding offset (the first real position is ``padding_idx + 1``);
* ``layernorm_embedding.*`` (post-LN models) and ``layer_norm.*`` (pre-LN models);
* ``layers.N.{self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm}``;
* ``lm_head.{dense, layer_norm, bias}``: the output projection is tied to
  ``embed_tokens.weight``, as in RoBERTa.

Embeddings are not scaled (RoBERTa's ``no_scale_embedding``), and padded positions
are zeroed after the embedding, as fairseq does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from w2vtools.models.layers import ACTIVATIONS, TransformerSentenceEncoderLayer, dropout


@dataclass
class TokenTransformerConfig:
    """Architecture of a :class:`TokenTransformer`; field names are fairseq's without ``encoder_``.

    The defaults are RoBERTa BASE, the size of vq-wav2vec's BERT.

    Example:
        >>> cfg = TokenTransformerConfig(vocab_size=104, causal=True)
        >>> cfg.embed_dim, cfg.layers
        (768, 12)
    """

    vocab_size: int
    padding_idx: int = 1  # fairseq Dictionary: <s>=0 <pad>=1 </s>=2 <unk>=3
    embed_dim: int = 768
    ffn_embed_dim: int = 3072
    layers: int = 12
    attention_heads: int = 12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    activation_fn: str = "gelu"
    max_positions: int = 512
    causal: bool = False  # True: each position sees itself and the past only (a language model)
    layer_norm_first: bool = False  # False: post-LN (BERT, RoBERTa); True: pre-LN with a final norm
    layernorm_embedding: bool = True

    def __post_init__(self) -> None:
        if self.embed_dim % self.attention_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by attention_heads {self.attention_heads}")
        if self.activation_fn not in ACTIVATIONS:
            raise ValueError(f"activation_fn must be one of {sorted(ACTIVATIONS)}")
        if not 0 <= self.padding_idx < self.vocab_size:
            raise ValueError(f"padding_idx {self.padding_idx} is outside the vocabulary of {self.vocab_size}")


_PRESETS: dict[str, dict] = {
    # RoBERTa BASE, as vq-wav2vec's BERT on units was trained
    "base": {"embed_dim": 768, "ffn_embed_dim": 3072, "layers": 12, "attention_heads": 12, "max_positions": 512},
    # small enough to train in minutes on a CPU core
    "tiny": {"embed_dim": 64, "ffn_embed_dim": 256, "layers": 2, "attention_heads": 2, "max_positions": 512,
             "dropout": 0.1, "attention_dropout": 0.0},
}


def token_transformer_preset(name: str, vocab_size: int, **overrides) -> TokenTransformerConfig:
    """A named size (``base`` or ``tiny``) for a vocabulary, with fields overridden.

    Example:
        >>> token_transformer_preset("tiny", 40, causal=True).layers
        2
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown token Transformer preset {name!r} (choose from {', '.join(sorted(_PRESETS))})")
    return replace(TokenTransformerConfig(vocab_size=vocab_size, **_PRESETS[name]), **overrides)


class LMHead(nn.Module):
    """RoBERTa's output head: dense + activation + layer norm, then the tied embedding matrix."""

    def __init__(self, cfg: TokenTransformerConfig, weight: nn.Parameter):
        super().__init__()
        self.dense = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.activation = ACTIVATIONS[cfg.activation_fn]
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.weight = weight  # tied: the same Parameter as embed_tokens.weight
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.layer_norm(self.activation(self.dense(x))), self.weight) + self.bias


class TokenTransformer(nn.Module):
    """Token embeddings + learned positions + Transformer blocks + a tied LM head.

    Example:
        >>> model = TokenTransformer(token_transformer_preset("tiny", 12, causal=True)).eval()
        >>> tokens = torch.tensor([[4, 5, 6, 2], [4, 7, 1, 1]])
        >>> out = model(tokens, tokens.eq(1))
        >>> out["logits"].shape, out["hidden"].shape
        (torch.Size([2, 4, 12]), torch.Size([2, 4, 64]))
    """

    def __init__(self, cfg: TokenTransformerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.padding_idx)
        self.embed_positions = nn.Embedding(cfg.max_positions + cfg.padding_idx + 1, d, padding_idx=cfg.padding_idx)
        self.layernorm_embedding = nn.LayerNorm(d) if cfg.layernorm_embedding else None
        self.layers = nn.ModuleList(
            TransformerSentenceEncoderLayer(
                d, cfg.ffn_embed_dim, cfg.attention_heads, dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
                activation_fn=cfg.activation_fn, layer_norm_first=cfg.layer_norm_first,
            )
            for _ in range(cfg.layers)
        )
        self.layer_norm = nn.LayerNorm(d) if cfg.layer_norm_first else None
        self.lm_head = LMHead(cfg, self.embed_tokens.weight)
        self.apply(_init_bert_params)

    @property
    def num_layers(self) -> int:
        return self.cfg.layers

    def positions(self, padding_mask: torch.Tensor | None, bsz: int, tsz: int, device: torch.device) -> torch.Tensor:
        """fairseq's ``make_positions``: 1-based over real tokens, offset by ``padding_idx``; pads get ``padding_idx``."""
        if padding_mask is None:
            return torch.arange(tsz, device=device).expand(bsz, tsz) + self.cfg.padding_idx + 1
        real = (~padding_mask).long()
        return torch.cumsum(real, dim=1) * real + self.cfg.padding_idx

    def attention_mask(self, padding_mask: torch.Tensor | None, tsz: int, device: torch.device) -> torch.Tensor | None:
        """Bool mask broadcastable to (B, H, T, T), True where a query may attend a key; None: everything."""
        mask = None
        if padding_mask is not None and bool(padding_mask.any()):
            mask = (~padding_mask)[:, None, None, :]
        if self.cfg.causal:
            causal = torch.ones(tsz, tsz, dtype=torch.bool, device=device).tril()[None, None]
            mask = causal if mask is None else mask & causal
        return mask

    def forward(
        self,
        tokens: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        *,
        layer: int | None = None,
        return_all: bool = False,
        masked_tokens: torch.Tensor | None = None,
    ) -> dict:
        """Run the model.

        Args:
            tokens: (B, T) token ids.
            padding_mask: (B, T) bool, True at padding; None: no padding.
            layer: stop after this many blocks (0 = the embeddings) and return that
                output as ``hidden`` (no logits); None runs every block.
            return_all: also return ``layers``: [embeddings, block 1, ..., block N].
            masked_tokens: (B, T) bool: the head runs at these positions only and
                ``logits`` is (M, V), M the number of True (fairseq RoBERTa's
                ``masked_tokens``: a masked LM needs no logits elsewhere).

        Returns:
            ``{"hidden": (B, T, C), "layers": [...], "logits": (B, T, V)}``; ``logits``
            only when every block ran.
        """
        bsz, tsz = tokens.shape
        if tsz > self.cfg.max_positions:
            raise ValueError(f"sequence of {tsz} tokens exceeds max_positions {self.cfg.max_positions}")
        x = self.embed_tokens(tokens) + self.embed_positions(self.positions(padding_mask, bsz, tsz, tokens.device))
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = dropout(x, self.cfg.dropout, self.training)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        attn_mask = self.attention_mask(padding_mask, tsz, tokens.device)
        hidden = [x] if return_all else []
        if layer is not None and not 0 <= layer <= self.cfg.layers:
            raise ValueError(f"layer {layer} is outside 0..{self.cfg.layers}")
        for block in self.layers[: self.cfg.layers if layer is None else layer]:
            x = block(x, attn_mask)
            if return_all:
                hidden.append(x)
        if layer is not None:
            return {"hidden": x, "layers": hidden}
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        head_input = x if masked_tokens is None else x[masked_tokens]
        return {"hidden": x, "layers": hidden, "logits": self.lm_head(head_input)}

    def features(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None, layer: int | None = None) -> torch.Tensor:
        """(B, T, C) output of block ``layer`` (None: the last, after the final norm of pre-LN models)."""
        if layer is None:  # every block, and the head on no position at all
            none = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
            return self.forward(tokens, padding_mask, masked_tokens=none)["hidden"]
        return self.forward(tokens, padding_mask, layer=layer)["hidden"]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on hidden states of any shape (..., C), e.g. only the masked positions."""
        return self.lm_head(hidden)


def _init_bert_params(module: nn.Module) -> None:
    # fairseq's init_bert_params: N(0, 0.02) linears and embeddings, zero biases and padding rows.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
