"""vq-wav2vec's BERT: a RoBERTa encoder over quantized speech units, and the quantizer + BERT as one encoder.

* :class:`UnitBertConfig`: the :class:`~w2vtools.models.token_transformer.TokenTransformer`
  architecture plus the span masking it is trained with (Baevski et al., 2020, vq-wav2vec,
  section 3.3: each unit starts a masked span with probability ``mask_prob`` = 0.05, spans
  are ``mask_length`` = 10 units and may overlap, about 40 % of the units end up masked).
  BERT's 80/10/10 replacement is there too, off by default (``leave_unmasked_prob``,
  ``random_token_prob``; fairseq's masked_lm task has them at 0.1 and 0.1).
* :class:`VQUnitBert`: audio -> quantizer codes -> BERT -> features per code frame, the
  encoder ``w2v featurize --model vq.pt --bert bert.pt`` runs. Its input to BERT is
  fairseq's masked-LM sample, ``<s> units </s>``; the features of the two markers are
  dropped, so there is one vector per code frame (10 ms for vq-wav2vec).

Example:
    >>> cfg = unit_bert_preset("tiny", 40)
    >>> cfg.layers, cfg.mask_prob, cfg.mask_length
    (2, 0.05, 10)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from w2vtools.errors import W2VError
from w2vtools.formats.labels import SPECIAL_SYMBOLS
from w2vtools.formats.units import MASK, UNK_INDEX, parse_unit
from w2vtools.models import FeatureOutput
from w2vtools.models.token_transformer import TokenTransformer, TokenTransformerConfig, token_transformer_preset

BOS, PAD, EOS = (SPECIAL_SYMBOLS.index(s) for s in ("<s>", "<pad>", "</s>"))


@dataclass
class UnitBertConfig(TokenTransformerConfig):
    """A bidirectional :class:`TokenTransformerConfig` with its masking (see the module docstring).

    Example:
        >>> UnitBertConfig(vocab_size=50).mask_length
        10
    """

    mask_prob: float = 0.05  # probability of each unit to start a masked span
    mask_length: int = 10  # units per span
    leave_unmasked_prob: float = 0.0  # of the masked units, kept as they are (BERT: 0.1)
    random_token_prob: float = 0.0  # of the masked units, replaced by a random unit (BERT: 0.1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.causal:
            raise ValueError("a unit BERT is bidirectional (causal=False)")
        if not 0 < self.mask_prob <= 1 or self.mask_length < 1:
            raise ValueError("mask_prob must be in (0, 1] and mask_length >= 1")
        if self.leave_unmasked_prob < 0 or self.random_token_prob < 0 \
                or self.leave_unmasked_prob + self.random_token_prob > 1:
            raise ValueError("leave_unmasked_prob and random_token_prob must be >= 0 and sum to at most 1")


def unit_bert_preset(name: str, vocab_size: int, **overrides) -> UnitBertConfig:
    """A unit BERT of a named size: ``base`` (RoBERTa BASE, as published) or ``tiny`` (CPU minutes).

    Example:
        >>> unit_bert_preset("base", 13000).embed_dim
        768
    """
    arch = dataclasses.asdict(token_transformer_preset(name, vocab_size))
    return dataclasses.replace(UnitBertConfig(**arch), **overrides)


def quantizer_shape(module: nn.Module) -> tuple[int, int]:
    """(groups, entries per group) of a model's quantizer (vq-wav2vec, wav2vec 2.0).

    Example:
        >>> from w2vtools.models.presets import get_preset
        >>> from w2vtools.models.wav2vec import Wav2VecModel
        >>> quantizer_shape(Wav2VecModel(get_preset("vq-wav2vec-kmeans-tiny")))
        (2, 32)
    """
    for attr in ("vector_quantizer", "quantizer"):
        q = getattr(module, attr, None)
        if q is not None and hasattr(q, "num_vars"):
            return int(getattr(q, "groups", 1)), int(q.num_vars)
    raise W2VError(f"{type(module).__name__} has no quantizer: codes need vq-wav2vec or wav2vec 2.0")


class VQUnitBert(nn.Module):
    """A quantizer's codes read by a unit BERT: features of any BERT layer per code frame.

    Args:
        quantizer: a model with ``quantize(source, padding_mask) -> (B, T, G)`` codes
            (-1 at padded frames), ``num_frames``, ``frame_shift``, ``sample_rate``.
        bert: the unit BERT.
        dictionary: the BERT's tokens (``g0-g1`` units or integer ones, as
            ``w2v quantize`` wrote them); a code the BERT never saw reads as ``<unk>``.

    Raises:
        W2VError: no token of ``dictionary`` is a code of this quantizer.

    Example:
        >>> from w2vtools.models.presets import get_preset
        >>> from w2vtools.models.wav2vec import Wav2VecModel
        >>> from w2vtools.formats.units import unit_vocabulary
        >>> vq = Wav2VecModel(get_preset("vq-wav2vec-kmeans-tiny"))
        >>> tokens = unit_vocabulary([f"{a}-{b}" for a in range(32) for b in range(32)])
        >>> model = VQUnitBert(vq, TokenTransformer(unit_bert_preset("tiny", len(tokens))), tokens).eval()
        >>> model.extract_features(torch.randn(1, 4000), layer=1).features.shape
        torch.Size([1, 23, 64])
    """

    family = "unit-bert"

    def __init__(self, quantizer: nn.Module, bert: TokenTransformer, dictionary: Sequence[str]):
        super().__init__()
        if len(dictionary) != bert.cfg.vocab_size:
            raise W2VError(f"the BERT has {bert.cfg.vocab_size} tokens, its dictionary {len(dictionary)}")
        self.quantizer = quantizer
        self.bert = bert
        self.groups, self.num_vars = quantizer_shape(quantizer)
        table = torch.full((self.num_vars**self.groups,), UNK_INDEX, dtype=torch.long)
        for i, token in enumerate(dictionary):
            flat = parse_unit(token, self.groups, self.num_vars) if token != MASK else None
            if flat is not None:
                table[flat] = i
        self.units_known = int((table != UNK_INDEX).sum())
        if not self.units_known:
            example = next((t for t in dictionary if t not in SPECIAL_SYMBOLS and t != MASK), "none")
            raise W2VError(f"none of the BERT's {len(dictionary)} tokens (e.g. {example!r}) is a code of this "
                           f"quantizer ({self.groups} groups of {self.num_vars}): was it trained on its units?")
        self.register_buffer("code_to_token", table, persistent=False)

    @property
    def sample_rate(self) -> int:
        return int(self.quantizer.sample_rate)

    @property
    def frame_shift(self) -> float:
        return float(self.quantizer.frame_shift)

    @property
    def num_layers(self) -> int:
        return self.bert.num_layers

    @property
    def max_seconds(self) -> float:
        """The longest audio the BERT takes at once: its positions less ``<s>`` and ``</s>``."""
        return (self.bert.cfg.max_positions - 2) * self.frame_shift

    def num_frames(self, num_samples: int) -> int:
        return self.quantizer.num_frames(num_samples)

    def tokens(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, G) codes -> ``<s> units </s>`` token rows (B, T + 2), padded, and the (B, T) real frames."""
        real = codes[..., 0] >= 0
        flat = torch.zeros(real.shape, dtype=torch.long, device=codes.device)
        for g in range(codes.shape[-1]):
            flat = flat * self.num_vars + codes[..., g].clamp(min=0)
        units = torch.where(real, self.code_to_token[flat], PAD)
        bsz = units.shape[0]
        seq = torch.cat([torch.full((bsz, 1), BOS, device=units.device, dtype=torch.long), units,
                         torch.full((bsz, 1), PAD, device=units.device, dtype=torch.long)], dim=1)
        seq[torch.arange(bsz, device=seq.device), real.sum(dim=1) + 1] = EOS
        return seq, real

    @torch.no_grad()
    def extract_features(
        self,
        source: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        *,
        output: str = "default",
        layer: int | str | None = None,
    ) -> FeatureOutput:
        """BERT features of the quantizer's codes of raw audio, (B, T, C) at the code frame rate.

        Args:
            source: (B, S) waveform; padding_mask: (B, S) bool, True at padding.
            output: ``default`` or ``layer`` (the same: a BERT layer).
            layer: BERT block N (0 = its embeddings); None: the last.
        """
        if output not in ("default", "layer"):
            raise W2VError(f"a unit BERT outputs its layers (layer N), not {output!r}")
        if layer is not None and not (isinstance(layer, int) and 0 <= layer <= self.num_layers):
            raise W2VError(f"layer {layer!r}: the unit BERT has layers 0..{self.num_layers}")
        codes = self.quantizer.quantize(source, padding_mask)
        if codes.ndim == 2:
            codes = codes.unsqueeze(-1)
        seq, real = self.tokens(codes)
        if seq.shape[1] > self.bert.cfg.max_positions:
            raise W2VError(f"{codes.shape[1]} code frames exceed the BERT's {self.bert.cfg.max_positions - 2} "
                           f"positions ({self.max_seconds:.2f} s): run longer audio in windows")
        pad = seq.eq(PAD)
        hidden = self.bert.features(seq, pad if bool(pad.any()) else None, layer=layer)
        feats = hidden[:, 1 : codes.shape[1] + 1].masked_fill(~real[..., None], 0.0)
        frame_pad = ~real
        return FeatureOutput(features=feats, padding_mask=frame_pad if bool(frame_pad.any()) else None)
