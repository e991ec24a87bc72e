"""CTC acoustic models on stored features: wav2letter-style convolutions or a BiLSTM.

The input is a ``(B, T, D)`` matrix of frozen features, as ``w2v featurize``
stores them (wav2vec ``c``/``z``, any wav2vec 2.0 layer, or the fbank/MFCC
baseline); the output is ``(B, T, V)`` CTC logits over letters at the same frame
rate (every convolution has stride 1), with fairseq's token order (``<s>`` =
blank at index 0, ``<pad>``, ``</s>``, ``<unk>``, then the dictionary).

Two architectures, one module:

* ``conv``: a wav2letter-style stack of 1-D convolutions with gated linear units
  (Collobert et al. 2016, Liptchinsky et al. 2017), each ``Conv1d(k) -> GLU ->
  dropout``, then a linear layer to the tokens;
* ``blstm``: a convolutional front-end (same blocks, stride 1) and a
  bidirectional LSTM (padding never reaches a real frame), then a linear layer.

Inputs are normalized with per-dimension mean and standard deviation measured on
the training features; both are buffers of the model, so a saved model carries
them and decoding applies them. Padded frames are zeroed before every
convolution, so an utterance gets the same output alone or in a batch.

Example:
    >>> cfg = DownstreamConfig(arch="blstm", input_dim=80, vocab_size=32,
    ...                        conv_channels=[64], conv_kernels=[5], lstm_hidden=32, lstm_layers=2)
    >>> model = DownstreamModel(cfg).eval()
    >>> logits, mask = model(torch.randn(2, 50, 80), None)
    >>> logits.shape
    torch.Size([2, 50, 32])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

ARCHES = ("blstm", "conv")


@dataclass
class DownstreamConfig:
    """A downstream CTC model on stored features.

    Attributes:
        arch: ``blstm`` (conv front-end + bidirectional LSTM) or ``conv`` (GLU convolutions only).
        input_dim: feature dimension D.
        vocab_size: CTC outputs, the blank (index 0) included.
        conv_channels: output channels of each convolution block (after the GLU).
        conv_kernels: kernel width of each block (odd: the output keeps the input length).
        lstm_hidden: LSTM units per direction (``blstm``).
        lstm_layers: stacked bidirectional LSTM layers (``blstm``).
        dropout: after the input normalization, every block and LSTM layer, and before the output layer.
        time_mask_prob, time_mask_length: training-time SpecAugment-style time masks:
            each frame starts a masked span of ``time_mask_length`` frames with this
            probability (0 = off).
        channel_mask_prob, channel_mask_length: the same over feature dimensions.
        frame_shift: seconds per frame (0.01 for fbank/MFCC, 0.02 for wav2vec 2.0).
        features: what the features are (``model``, ``output``, ``layer``, ``dim``...
            as the feature file records them), so a decoder can tell what to feed.
    """

    arch: str = "blstm"
    input_dim: int = 80
    vocab_size: int = 32
    conv_channels: list[int] = field(default_factory=lambda: [256])
    conv_kernels: list[int] = field(default_factory=lambda: [5])
    lstm_hidden: int = 256
    lstm_layers: int = 2
    dropout: float = 0.2
    time_mask_prob: float = 0.0
    time_mask_length: int = 5
    channel_mask_prob: float = 0.0
    channel_mask_length: int = 8
    frame_shift: float = 0.01
    features: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ValueError(f"arch {self.arch!r}: choose {' or '.join(ARCHES)}")
        self.conv_channels = [int(c) for c in self.conv_channels]
        self.conv_kernels = [int(k) for k in self.conv_kernels]
        if len(self.conv_channels) != len(self.conv_kernels):
            raise ValueError(
                f"conv_channels ({len(self.conv_channels)}) and conv_kernels ({len(self.conv_kernels)}) differ in length"
            )
        if any(k < 1 or k % 2 == 0 for k in self.conv_kernels):
            raise ValueError(f"conv_kernels {self.conv_kernels}: every width must be odd (stride 1, same length)")
        if self.arch == "conv" and not self.conv_channels:
            raise ValueError("a conv model needs at least one convolution (conv_channels)")
        if self.arch == "blstm" and (self.lstm_layers < 1 or self.lstm_hidden < 1):
            raise ValueError("a blstm model needs lstm_layers >= 1 and lstm_hidden >= 1")
        if self.input_dim < 1 or self.vocab_size < 2:
            raise ValueError(f"input_dim {self.input_dim} / vocab_size {self.vocab_size} too small")


class _GLUConv(nn.Module):
    """Conv1d (stride 1, same length) -> GLU -> dropout, on (B, C, T)."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, 2 * out_dim, kernel, padding=kernel // 2)
        self.glu = nn.GLU(dim=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.glu(self.conv(x)))


def _span_mask(shape: tuple[int, int], prob: float, length: int, valid: torch.Tensor | None,
               device: torch.device) -> torch.Tensor:
    """(B, N) bool: spans of ``length`` starting at each position with probability ``prob``."""
    batch, n = shape
    starts = torch.rand(batch, n, device=device) < prob
    if valid is not None:
        starts &= valid
    if not starts.any():
        return starts
    # a position is masked when a span started within the previous `length` positions
    kernel = torch.ones(1, 1, length, device=device)
    covered = torch.nn.functional.conv1d(starts.float()[:, None], kernel, padding=length - 1)[:, 0, :n]
    return covered > 0


class DownstreamModel(nn.Module):
    """Stored features -> CTC logits (see the module docstring).

    Args:
        cfg: the architecture.

    Example:
        >>> from w2vtools.models.presets import downstream_config
        >>> m = DownstreamModel(downstream_config("conv", "tiny", input_dim=80, vocab_size=16))
        >>> m(torch.zeros(1, 30, 80))[0].shape
        torch.Size([1, 30, 16])
    """

    def __init__(self, cfg: DownstreamConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.input_dim
        self.register_buffer("feature_mean", torch.zeros(d))
        self.register_buffer("feature_std", torch.ones(d))
        self.input_dropout = nn.Dropout(cfg.dropout)
        blocks = []
        dim = d
        for channels, kernel in zip(cfg.conv_channels, cfg.conv_kernels):
            blocks.append(_GLUConv(dim, channels, kernel, cfg.dropout))
            dim = channels
        self.convs = nn.ModuleList(blocks)
        self.lstm = None
        if cfg.arch == "blstm":
            self.lstm = nn.LSTM(
                dim, cfg.lstm_hidden, num_layers=cfg.lstm_layers, bidirectional=True, batch_first=True,
                dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0,
            )
            dim = 2 * cfg.lstm_hidden
        self.final_dropout = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(dim, cfg.vocab_size)
        self.num_updates = 0

    def _blstm(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The bidirectional LSTM over (B, T, C), padding never reaching a real frame.

        Each direction runs as its own one-layer, one-direction LSTM over a padded
        batch whose padding trails in that direction's time order (the backward
        direction reads every utterance reversed within its length). That equals
        ``nn.LSTM`` on a packed sequence, with the same parameters, but takes
        oneDNN's whole-sequence kernel, which a packed sequence on a CPU cannot
        (ATen then steps through time one small matrix product at a time): see
        BENCHMARKS.md, "Small training steps".
        """
        lstm = self.lstm
        batch, total = x.shape[:2]
        steps = torch.arange(total, device=x.device)
        if padding_mask is None:
            lengths = torch.full((batch,), total, device=x.device)
        else:
            lengths = (~padding_mask).sum(dim=1).clamp_min(1)
        # frame t of a reversed row is frame length - 1 - t; padding stays where it is
        source = lengths[:, None] - 1 - steps[None, :]
        source = torch.where(source >= 0, source, steps[None, :])[..., None]  # (B, T, 1)

        def reverse(t: torch.Tensor) -> torch.Tensor:  # its own inverse
            return t.gather(1, source.expand_as(t))

        keep = (steps[None, :] < lengths[:, None])[..., None].to(x.dtype)
        zeros = x.new_zeros(1, batch, lstm.hidden_size)

        def run(inp: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
            weights = [getattr(lstm, f"{name}_l{layer}{suffix}")
                       for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            return torch.lstm(inp, (zeros, zeros), weights, True, 1, 0.0, self.training, False, True)[0]

        for layer in range(lstm.num_layers):
            if layer > 0:
                x = nn.functional.dropout(x, lstm.dropout, self.training)
            x = torch.cat([run(x, layer, ""), reverse(run(reverse(x), layer, "_reverse"))], dim=-1) * keep
        return x

    @property
    def config(self) -> DownstreamConfig:
        return self.cfg

    @property
    def frame_shift(self) -> float:
        return float(self.cfg.frame_shift)

    @property
    def input_dim(self) -> int:
        return int(self.cfg.input_dim)

    def num_frames(self, num_input_frames: int) -> int:
        """Every layer keeps the length: one output frame per input frame."""
        return int(num_input_frames)

    def set_num_updates(self, num_updates: int) -> None:
        self.num_updates = num_updates

    @torch.no_grad()
    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the training features' per-dimension mean and standard deviation."""
        if mean.shape != (self.cfg.input_dim,) or std.shape != (self.cfg.input_dim,):
            raise ValueError(f"normalization statistics must have shape ({self.cfg.input_dim},)")
        self.feature_mean.copy_(mean.to(self.feature_mean))
        self.feature_std.copy_(std.clamp_min(1e-5).to(self.feature_std))

    def _augment(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        cfg = self.cfg
        valid = None if padding_mask is None else ~padding_mask
        if cfg.time_mask_prob > 0:
            tmask = _span_mask(x.shape[:2], cfg.time_mask_prob, cfg.time_mask_length, valid, x.device)
            x = x.masked_fill(tmask[..., None], 0.0)
        if cfg.channel_mask_prob > 0:
            cmask = _span_mask((x.shape[0], x.shape[2]), cfg.channel_mask_prob, cfg.channel_mask_length, None,
                               x.device)
            x = x.masked_fill(cmask[:, None, :], 0.0)
        return x

    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor | None = None):
        """(B, T, D) features -> ((B, T, V) logits, the (B, T) padding mask unchanged).

        Args:
            source: features as stored (normalized here).
            padding_mask: (B, T) bool, True at padded frames; None when nothing is padded.
        """
        if source.dim() != 3 or source.shape[-1] != self.cfg.input_dim:
            raise ValueError(f"expected (B, T, {self.cfg.input_dim}) features, got {tuple(source.shape)}")
        x = (source.float() - self.feature_mean) / self.feature_std
        keep = None if padding_mask is None else (~padding_mask)[..., None]
        if keep is not None:
            x = x * keep
        if self.training:
            x = self._augment(x, padding_mask)
        x = self.input_dropout(x)
        x = x.transpose(1, 2)  # (B, D, T)
        for block in self.convs:
            if keep is not None:
                x = x * keep.transpose(1, 2)  # padding must not leak into real frames
            x = block(x)
        x = x.transpose(1, 2)  # (B, T, C)
        if self.lstm is not None:
            x = self._blstm(x, padding_mask)
        x = self.final_dropout(x)
        return self.proj(x), padding_mask
