"""CTC fine-tuning model: a pretrained encoder plus a linear projection to letters.

The output dictionary follows fairseq's order: ``<s>`` (the CTC blank, index 0),
``<pad>``, ``</s>``, ``<unk>``, then the lines of ``dict.ltr.txt``
(:func:`w2vtools.formats.labels.ctc_vocabulary`).

In train mode the wav2vec 2.0 encoder is regularized as in fairseq's
``wav2vec2_asr`` fine-tuning: time masking (``mask_prob``, ``mask_length``),
channel masking (``mask_channel_prob``, ``mask_channel_length`` 64), layer drop,
and the feature encoder frozen (``feature_grad_mult`` 0) or its gradients scaled.
Freezing the whole encoder for the first updates is the trainer's job
(``run.freeze_updates``, :meth:`w2vtools.train.trainer.Trainer._freeze`).

Example:
    >>> from w2vtools.models.presets import get_preset
    >>> from w2vtools.models.wav2vec2 import Wav2Vec2Model
    >>> ctc = CTCModel(Wav2Vec2Model(get_preset("wav2vec2", "tiny")), vocab_size=32).eval()
    >>> logits, pad = ctc(torch.randn(2, 16000), None)
    >>> logits.shape
    torch.Size([2, 49, 32])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from w2vtools.models.registry import build_model, config_class_for, config_from_dict, config_to_dict, model_class_for


@dataclass
class CTCConfig:
    """A CTC model: its encoder (family + config dict) and the fine-tuning regularization.

    Defaults are fairseq's ``base_100h.yaml`` fine-tuning settings. The masking,
    dropout and layer-drop values override the encoder's pretraining values.
    """

    vocab_size: int
    encoder_family: str = "wav2vec2"
    encoder: dict = field(default_factory=dict)
    final_dropout: float = 0.0
    apply_mask: bool = True
    mask_prob: float = 0.65
    mask_length: int = 10
    mask_channel_prob: float = 0.5
    mask_channel_length: int = 64
    layerdrop: float = 0.1
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.1
    dropout_input: float = 0.0
    feature_grad_mult: float = 0.0
    freeze_finetune_updates: int = 0  # recorded (fairseq's name); run.freeze_updates does the freezing


def apply_finetune_settings(encoder: nn.Module, cfg: CTCConfig) -> None:
    """Set a wav2vec 2.0 encoder's masking, dropout and layer drop to fine-tuning values.

    Only encoders with a wav2vec 2.0-style ``cfg`` (``mask_prob`` ...) are touched;
    others keep their own settings.
    """
    ecfg = getattr(encoder, "cfg", None)
    if ecfg is None or not hasattr(ecfg, "mask_prob") or not hasattr(encoder, "encoder"):
        return
    ecfg.mask_prob = cfg.mask_prob if cfg.apply_mask else 0.0
    ecfg.mask_length = cfg.mask_length
    ecfg.mask_channel_prob = cfg.mask_channel_prob if cfg.apply_mask else 0.0
    ecfg.mask_channel_length = cfg.mask_channel_length
    ecfg.feature_grad_mult = cfg.feature_grad_mult
    ecfg.encoder_layerdrop = cfg.layerdrop
    ecfg.dropout, ecfg.attention_dropout, ecfg.activation_dropout = cfg.dropout, cfg.attention_dropout, cfg.activation_dropout
    ecfg.dropout_input = cfg.dropout_input
    ecfg.require_same_masks = False
    tr = encoder.encoder
    tr.layerdrop = cfg.layerdrop
    tr.dropout = cfg.dropout
    for layer in tr.layers:
        layer.self_attn.dropout = cfg.attention_dropout
        layer.dropout1.p = cfg.dropout
        layer.dropout2.p = cfg.activation_dropout
        layer.dropout3.p = cfg.dropout
    if hasattr(encoder, "dropout_input"):
        encoder.dropout_input.p = cfg.dropout_input


class CTCModel(nn.Module):
    """Encoder + dropout + ``proj`` (Linear to the vocabulary).

    Args:
        encoder: a wav2vec-family encoder (``extract_features`` interface).
        vocab_size: number of CTC outputs (including the blank at index 0).
        cfg: fine-tuning settings; defaults to :class:`CTCConfig` defaults. The
            encoder's masking/dropout settings are overwritten from it.

    Parameter names: ``encoder.*`` (fairseq: ``w2v_encoder.w2v_model.*``) and
    ``proj.*`` (fairseq: ``w2v_encoder.proj.*``).
    """

    def __init__(self, encoder: nn.Module, vocab_size: int, cfg: CTCConfig | None = None):
        super().__init__()
        if cfg is None:
            cfg = CTCConfig(vocab_size=vocab_size)
        cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
        if not cfg.encoder and getattr(encoder, "cfg", None) is not None:
            cfg.encoder = config_to_dict(encoder.cfg)
            cfg.encoder_family = getattr(encoder, "family", cfg.encoder_family)
        self.cfg = cfg
        self.encoder = encoder
        apply_finetune_settings(encoder, cfg)
        self.final_dropout = nn.Dropout(cfg.final_dropout)
        dim = _output_dim(encoder)
        self.proj = nn.Linear(dim, vocab_size)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.num_updates = 0

    @classmethod
    def from_config(cls, cfg: CTCConfig) -> "CTCModel":
        """Build the encoder from ``cfg.encoder_family``/``cfg.encoder`` and wrap it."""
        enc_cfg = config_from_dict(config_class_for(cfg.encoder_family), cfg.encoder)
        encoder = build_model(model_class_for(cfg.encoder_family), enc_cfg)
        return cls(encoder, cfg.vocab_size, cfg)

    @property
    def config(self) -> CTCConfig:
        """The config with the encoder's current settings (for saving)."""
        return self.cfg

    @property
    def family(self) -> str:
        return self.cfg.encoder_family

    @property
    def sample_rate(self) -> int:
        return self.encoder.sample_rate

    @property
    def frame_shift(self) -> float:
        return self.encoder.frame_shift

    def num_frames(self, num_samples: int) -> int:
        return self.encoder.num_frames(num_samples)

    def set_num_updates(self, num_updates: int) -> None:
        """Track updates (the encoder's schedules, such as the Gumbel temperature, follow them)."""
        self.num_updates = num_updates
        if hasattr(self.encoder, "set_num_updates"):
            self.encoder.set_num_updates(num_updates)

    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor | None = None):
        """(B, S) audio -> ((B, T, V) logits, (B, T) frame padding mask or None)."""
        kwargs = {}
        if getattr(self.encoder, "family", None) == "wav2vec2":
            kwargs["mask"] = self.training and self.cfg.apply_mask
        out = self.encoder.extract_features(source, padding_mask, **kwargs)
        x = self.final_dropout(out.features)
        return self.proj(x), out.padding_mask


def _output_dim(encoder: nn.Module) -> int:
    cfg = getattr(encoder, "cfg", None)
    for name in ("encoder_embed_dim", "output_dim", "aggregator_dim"):
        if cfg is not None and hasattr(cfg, name):
            return int(getattr(cfg, name))
    if hasattr(encoder, "output_dim"):
        return int(encoder.output_dim)
    raise ValueError(f"cannot tell the output dimension of {type(encoder).__name__}")
