"""wav2vec 2.0 / XLS-R (Baevski et al., 2020; Babu et al., 2021).

The model follows fairseq's ``Wav2Vec2Model`` module for module and name for name
(``feature_extractor.conv_layers.0.0.weight``, ``encoder.layers.3.self_attn.q_proj.weight``,
``quantizer.vars`` ...), so fairseq state dicts load by name. What differs is how
it computes, for speed on CPU and exactness with padding:

* The convolutional feature encoder runs oneDNN convolutions, with float32 norms,
  and hands the Transformer channels-last (B, T, C) features.
* With a padding mask, the group norm of the first convolution takes its
  statistics over each utterance's valid frames only, so an utterance's features
  are the same batched or alone. Without padding this is exactly GroupNorm, i.e.
  fairseq, Hugging Face and torchaudio (which, batched, let padding shift the
  statistics: Hugging Face tells users not to pass an attention mask to such
  models for that reason).
* Attention uses ``scaled_dot_product_attention`` with q/k/v fused into one GEMM;
  in inference the fused weights and the weight-normed positional convolution
  are folded once and cached (re-folded automatically when parameters change).
* Masks and negatives are drawn with torch on the model's device.

Entry points:

* ``extract_features(source, padding_mask, output=..., layer=...)``: features
  for downstream use (see :mod:`w2vtools.models`).
* ``quantize(source, padding_mask)``: (B, T, G) codebook indices.
* ``forward(source, padding_mask)``: the pretraining forward (masking, quantized
  targets, distractors, logits); ``pretraining_loss(net_output)`` turns it into
  fairseq's summed contrastive + diversity + feature-penalty loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from w2vtools.errors import W2VError
from w2vtools.models import FeatureOutput
from w2vtools.models.layers import (
    ACTIVATIONS,
    Dropout,
    TransformerSentenceEncoderLayer,
    autocast_dtype,
    conv1d_time_major,
    cpu_has_amx,
    dropout,
    masked_group_norm,
    receptive_field,
    time_major_conv_applies,
)
from w2vtools.models.quantizers import GumbelVectorQuantizer

BASE_CONV_LAYERS: list[tuple[int, int, int]] = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


@dataclass
class Wav2Vec2Config:
    """Architecture and pretraining hyper-parameters; field names are fairseq's.

    The defaults are wav2vec 2.0 BASE as pretrained on LibriSpeech (fairseq's
    ``wav2vec2_base_librispeech.yaml``), plus ``normalize`` (fairseq's task option:
    zero-mean unit-variance input per utterance) and the two loss weights of
    fairseq's criterion (``loss_weights: [0.1, 10]``).

    Example:
        >>> cfg = Wav2Vec2Config(encoder_layers=24, encoder_embed_dim=1024, encoder_attention_heads=16)
        >>> cfg.conv_feature_layers[0]
        (512, 10, 5)
    """

    # feature encoder
    extractor_mode: str = "default"  # "default": group norm in layer 1; "layer_norm": in every layer
    conv_feature_layers: list[tuple[int, int, int]] = field(default_factory=lambda: list(BASE_CONV_LAYERS))
    conv_bias: bool = False
    feature_grad_mult: float = 0.1
    normalize: bool = False
    # Transformer
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.05
    dropout_input: float = 0.1
    dropout_features: float = 0.1
    # quantizer and contrastive task
    quantize_targets: bool = True
    final_dim: int = 256
    latent_vars: int = 320
    latent_groups: int = 2
    latent_dim: int = 0  # 0: final_dim
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)
    weight_proj_depth: int = 1
    weight_proj_factor: int = 1
    logit_temp: float = 0.1
    num_negatives: int = 100
    cross_sample_negatives: int = 0
    diversity_weight: float = 0.1
    feature_pen_weight: float = 10.0
    # time masking (fairseq: mask_prob is the start probability x mask_length)
    mask_prob: float = 0.65
    mask_length: int = 10
    mask_min_masks: int = 2
    no_mask_overlap: bool = False
    mask_min_space: int = 1
    require_same_masks: bool = True
    # channel masking
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 10
    no_mask_channel_overlap: bool = False
    mask_channel_min_space: int = 1

    def __post_init__(self) -> None:
        self.conv_feature_layers = [tuple(int(v) for v in layer) for layer in self.conv_feature_layers]
        self.latent_temp = tuple(float(t) for t in self.latent_temp)
        if self.extractor_mode not in ("default", "layer_norm"):
            raise ValueError(f"extractor_mode must be 'default' or 'layer_norm', not {self.extractor_mode!r}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError("encoder_embed_dim must be divisible by encoder_attention_heads")
        if self.activation_fn not in ACTIVATIONS:
            raise ValueError(f"activation_fn must be one of {sorted(ACTIVATIONS)}")




# --------------------------------------------------------------------------- masking


def compute_mask_indices(
    shape: tuple[int, int],
    padding_mask: torch.Tensor | None,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    no_overlap: bool = False,
    min_space: int = 0,
    require_same_masks: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random span mask, fairseq's ``compute_mask_indices`` ("static" lengths) in torch.

    For each row of valid length ``n``, ``floor(mask_prob * n / mask_length + U[0,1))``
    spans (at least ``min_masks``) of ``mask_length`` frames start at distinct random
    positions; spans may overlap (so about 49 % of frames end up masked for 0.65 x 10),
    unless ``no_overlap``, in which case spans are placed uniformly at random with at
    least ``min_space`` frames between them (fewer spans when they do not fit; fairseq
    places them by recursive interval splitting, a slightly different distribution).
    With ``require_same_masks`` every row keeps a random subset of its masked frames
    so that all rows have as many as the least-masked row (needed to gather
    ``(B, M, C)`` targets). Randomness comes from torch's generator on ``device``.

    Args:
        shape: (B, T).
        padding_mask: (B, T) bool, True at padding, or None.
        mask_prob: span start probability x mask_length.
        mask_length: span length.
        min_masks: minimum number of spans per row.
        no_overlap: forbid overlapping spans.
        min_space: with no_overlap, minimum frames between spans.
        require_same_masks: equalize the number of masked frames across rows.
        device: where to build the mask (default: the padding mask's, else CPU).

    Returns:
        (B, T) bool mask, True at masked frames.

    Example:
        >>> m = compute_mask_indices((2, 500), None, 0.65, 10, min_masks=2)
        >>> 0.3 < m.float().mean().item() < 0.7
        True
    """
    bsz, all_sz = shape
    if device is None:
        device = padding_mask.device if padding_mask is not None else torch.device("cpu")
    if padding_mask is not None:
        sz = all_sz - padding_mask.long().sum(-1).to(device)
    else:
        sz = torch.full((bsz,), all_sz, dtype=torch.long, device=device)
    num_mask = torch.floor(mask_prob * sz.double() / float(mask_length) + torch.rand(bsz, device=device, dtype=torch.float64))
    num_mask = num_mask.long().clamp(min=min_masks)
    length = mask_length

    if not no_overlap:
        # fairseq: starts drawn without replacement from range(sz - length), shrunk to
        # range(num_mask + 1) when the row is too short.
        high = torch.where(sz - length <= num_mask, num_mask + 1, sz - length)
        width = max(int(high.max().item()), 1)
        pos = torch.arange(width, device=device)
        starts_at = _choose_distinct(pos, high, num_mask, bsz, width, device)  # (B, width) bool
    else:
        # Uniform non-overlapping placement ("stars and bars"): k spans of `length` with
        # gaps >= min_space fit when k*length + (k-1)*min_space <= sz.
        fit = torch.div(sz + min_space, length + min_space, rounding_mode="floor").clamp(min=0)
        num_mask = torch.minimum(num_mask, fit)
        slack = (sz - num_mask * length - (num_mask - 1).clamp(min=0) * min_space).clamp(min=0)
        high = slack + num_mask
        width = max(int(high.max().item()), 1)
        pos = torch.arange(width, device=device)
        chosen = _choose_distinct(pos, high, num_mask, bsz, width, device)
        # the j-th smallest chosen value u_j gives start u_j - j + j * (length + min_space)
        rank = chosen.long().cumsum(-1) - 1
        start = pos.unsqueeze(0) + rank.clamp(min=0) * (length + min_space - 1)
        span_width = int(start.max().item()) + 2
        dummy = span_width - 1  # unchosen entries are written to a column dropped below
        starts_at = torch.zeros(bsz, span_width, dtype=torch.bool, device=device)
        starts_at.scatter_(1, torch.where(chosen, start, torch.full_like(start, dummy)), chosen)
        starts_at = starts_at[:, :dummy]
    # Expand starts into spans: a frame is masked when a start lies within `length` before it.
    spans = F.conv1d(
        starts_at.float().unsqueeze(1), torch.ones(1, 1, length, device=device), padding=length - 1
    )[:, 0]
    mask = torch.zeros(bsz, all_sz, dtype=torch.bool, device=device)
    n = min(all_sz, spans.size(1))
    mask[:, :n] = spans[:, :n] > 0.5
    mask &= torch.arange(all_sz, device=device).unsqueeze(0) < sz.unsqueeze(1)
    if require_same_masks and bsz > 1:
        counts = mask.sum(-1)
        keep = int(counts.min().item())
        if int(counts.max().item()) > keep:
            score = torch.rand(bsz, all_sz, device=device).masked_fill(~mask, 2.0)
            order = score.argsort(dim=-1)
            kept = torch.zeros_like(mask)
            kept.scatter_(1, order[:, :keep], True)
            mask = kept & mask
    return mask


def _choose_distinct(pos, high, count, bsz, width, device) -> torch.Tensor:
    """(B, width) bool: `count[b]` distinct positions drawn uniformly from range(high[b])."""
    score = torch.rand(bsz, width, device=device).masked_fill(pos.unsqueeze(0) >= high.unsqueeze(1), 2.0)
    rank = torch.empty_like(score, dtype=torch.long)
    rank.scatter_(1, score.argsort(dim=-1), pos.unsqueeze(0).expand(bsz, -1).contiguous())
    return rank < count.unsqueeze(1)


# --------------------------------------------------------------------------- building blocks


class _GradMultiply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class TransposeLast(nn.Module):
    """Swap the last two dims (kept so that layer-norm blocks have fairseq's indices)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


class ConvFeatureExtractionModel(nn.Module):
    """The convolutional feature encoder: strided Conv1d + (norm) + GELU blocks.

    ``conv_layers[i]`` is ``Sequential(Conv1d, Dropout, [norm,] GELU)`` as in fairseq;
    norm is GroupNorm(C, C) in the first block for ``mode="default"`` and
    ``Sequential(TransposeLast, LayerNorm, TransposeLast)`` in every block for
    ``mode="layer_norm"``. :meth:`forward` returns channels-last (B, T, C).

    Example:
        >>> fe = ConvFeatureExtractionModel(BASE_CONV_LAYERS)
        >>> fe(torch.randn(1, 16000)).shape
        torch.Size([1, 49, 512])
    """

    def __init__(self, conv_layers, dropout: float = 0.0, mode: str = "default", conv_bias: bool = False):
        super().__init__()
        self.mode = mode
        self.layer_specs = [tuple(c) for c in conv_layers]
        self.conv_layers = nn.ModuleList()
        in_d = 1
        for i, (dim, k, stride) in enumerate(self.layer_specs):
            conv = nn.Conv1d(in_d, dim, k, stride=stride, bias=conv_bias)
            nn.init.kaiming_normal_(conv.weight)
            blocks: list[nn.Module] = [conv, Dropout(dropout)]
            if mode == "layer_norm":
                blocks.append(nn.Sequential(TransposeLast(), nn.LayerNorm(dim, elementwise_affine=True), TransposeLast()))
            elif mode == "default" and i == 0:
                blocks.append(nn.GroupNorm(dim, dim, affine=True))
            blocks.append(nn.GELU())
            self.conv_layers.append(nn.Sequential(*blocks))
            in_d = dim

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame (400 for the standard encoder): the shortest input."""
        return receptive_field(self.layer_specs)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames produced for inputs of ``lengths`` samples (floor((L - k) / s) + 1 per layer)."""
        for _, k, s in self.layer_specs:
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def forward(self, source: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) waveform -> (B, T, C) features (channels-last, ready for the Transformer).

        Args:
            source: (B, S) samples.
            lengths: (B,) valid samples per row, or None when nothing is padded. Used
                only by the first block's group norm (statistics over valid frames).
        """
        if source.size(1) < self.receptive_field:  # before any layer, float or int8, meets too few frames
            raise W2VError(f"input of {source.size(1)} samples is shorter than the feature encoder's receptive "
                           f"field ({self.receptive_field} samples)")
        x = source.unsqueeze(1)  # (B, 1, S)
        time_major = False  # x is (B, C, T) until a convolution runs as GEMMs, then (B, T, C)
        for i, block in enumerate(self.conv_layers):
            conv = block[0]
            if i == 0 and _gemm_first_conv(conv, source):
                # One input channel: GEMMs over the waveform's windows in inference (in training
                # oneDNN, whose backward, a weight gradient only, measured faster), time-major
                # from here on; with its group norm folded into the same GEMM when it can be.
                norm = block[2] if len(block) == 4 else None
                if _foldable_group_norm(norm, block[1]):
                    # under autocast written in its dtype, which the next convolution reads
                    x = _waveform_conv_norm_as_gemm(source, conv, norm, self._frames_after(lengths, 1), gelu=True,
                                                    out_dtype=autocast_dtype("cpu") or torch.float32)
                    time_major = True
                    continue
                x, time_major = _waveform_conv_as_gemm(source, conv), True
            elif i == 0 and _first_conv_in_float32(conv, source):
                with torch.autocast("cpu", enabled=False):
                    x = conv(x.float())
            elif i == 0:
                x = conv(x)
            elif time_major_conv_applies(conv, x):
                x = conv1d_time_major(x if time_major else x.transpose(1, 2), conv)
                time_major = True
            else:  # cuDNN, autocast, the int8 modules: channels first
                x = conv(x.transpose(1, 2) if time_major else x)
                time_major = False
            x = block[1](x)
            if len(block) == 4:
                norm = block[2]
                if isinstance(norm, nn.GroupNorm):
                    if time_major:
                        x, time_major = x.transpose(1, 2), False
                    x = masked_group_norm(x, norm, self._padding_after(lengths, i + 1, x.size(2)))
                else:
                    ln = norm[1]
                    x = x if time_major else x.transpose(1, 2)
                    x = F.layer_norm(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x,
                                     ln.normalized_shape, ln.weight, ln.bias, ln.eps).type_as(source)
                    if not time_major:
                        x = x.transpose(1, 2)
            x = F.gelu(x)
        return x if time_major else x.transpose(1, 2)

    def _frames_after(self, lengths: torch.Tensor | None, num_layers: int) -> torch.Tensor | None:
        """(B,) valid frames after the first ``num_layers`` convolutions, at least 1 (None without lengths)."""
        if lengths is None:
            return None
        for _, k, s in self.layer_specs[:num_layers]:
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        return lengths.clamp(min=1)

    def _padding_after(self, lengths: torch.Tensor | None, num_layers: int, num_frames: int) -> torch.Tensor | None:
        """(B, T) padding mask after the first ``num_layers`` convolutions (None without lengths)."""
        frames = self._frames_after(lengths, num_layers)
        if frames is None:
            return None
        return torch.arange(num_frames, device=frames.device).unsqueeze(0) >= frames.unsqueeze(1)


def _gemm_first_conv(conv: nn.Module, source: torch.Tensor) -> bool:
    """Whether :func:`_waveform_conv_as_gemm` computes ``conv`` on ``source``: a plain float32
    one-channel convolution on the CPU, outside autograd, and outside autocast or under bf16
    autocast (the GEMMs stay float32; see :func:`_waveform_conv_norm_as_gemm`'s ``out_dtype``).
    In training oneDNN's backward (a weight gradient only) measured faster than autograd's
    through the GEMMs."""
    return (
        type(conv) is nn.Conv1d
        and conv.in_channels == 1
        and conv.padding == (0,)
        and conv.dilation == (1,)
        and source.device.type == "cpu"
        and source.dtype == torch.float32
        and not (torch.is_grad_enabled() and conv.weight.requires_grad)
        and autocast_dtype("cpu") in (None, torch.bfloat16)
    )


def _first_conv_in_float32(conv: nn.Module, source: torch.Tensor) -> bool:
    """Whether the one-channel first convolution should leave CPU autocast and run in float32.

    Its reduction is only ``kernel`` multiply-adds per output, and oneDNN's bf16 kernel for it
    ran at a quarter of the float32 one's speed (BENCHMARKS.md). Its output feeds the float32
    group norm anyway, so in bf16 it also cost two casts of the model's largest tensor.
    """
    return (type(conv) is nn.Conv1d and conv.in_channels == 1 and source.device.type == "cpu"
            and torch.is_autocast_enabled("cpu"))


def _waveform_conv_as_gemm(source: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """(B, S) waveform -> (B, T, C) ``conv(source)``, time-major, one GEMM per utterance over its windows.

    A one-channel convolution has a reduction of only ``kernel`` (10) multiply-adds per output,
    which oneDNN's direct convolution runs far below the machine's speed; as
    ``windows (T, k) @ weight.T (k, C)`` it runs at the speed of writing its output, already
    in the layout the next layers read.

    Example:
        >>> conv = nn.Conv1d(1, 8, 10, stride=5, bias=False)
        >>> x = torch.randn(2, 400)
        >>> with torch.no_grad():
        ...     torch.allclose(_waveform_conv_as_gemm(x, conv), conv(x.unsqueeze(1)).transpose(1, 2), atol=1e-6)
        True
    """
    (k,), (stride,) = conv.kernel_size, conv.stride
    windows = source.unfold(1, k, stride)  # (B, T, k), a view
    weight = conv.weight.view(conv.out_channels, k).t()
    out = source.new_empty(source.size(0), windows.size(1), conv.out_channels)
    with torch.autocast("cpu", enabled=False):  # float32 under autocast too: a reduction of k terms
        for b in range(source.size(0)):  # a batched matmul with a broadcast weight measured slower
            if conv.bias is None:
                torch.mm(windows[b], weight, out=out[b])
            else:
                torch.addmm(conv.bias, windows[b], weight, out=out[b])
    return out


def _foldable_group_norm(norm: nn.Module | None, drop: nn.Module) -> bool:
    """Whether :func:`_waveform_conv_norm_as_gemm` computes the first block's convolution and
    ``norm``: a GroupNorm with one channel per group (wav2vec 2.0's ``mode="default"``), and no
    dropout between them."""
    return (isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels
            and (not drop.training or drop.p == 0))


def _waveform_conv_norm_as_gemm(source: torch.Tensor, conv: nn.Conv1d, norm: nn.GroupNorm,
                                frames: torch.Tensor | None, gelu: bool = False,
                                out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, S) waveform -> (B, T, C) ``norm(conv(source))``, time-major, as one GEMM per utterance.

    A one-channel convolution's output channel ``c`` is ``w_c . window``, so its mean and
    variance over an utterance's frames are ``w_c . mu`` and ``w_c' Sigma w_c``, where ``mu`` and
    ``Sigma`` (k x k) are the mean and covariance of the utterance's ``k``-sample windows:
    the statistics of all C channels cost a (k x k) product instead of passes over (C, T).
    Normalizing is then affine per channel and folds into the weights, so convolution and
    norm are one GEMM, and nothing is written but the output. The windows are taken from the
    waveform less its mean (the norm does not see a constant shift) and the statistics are
    float64, so a DC offset cancels before float32 sums (oneDNN's convolution plus
    ``F.group_norm`` is no closer to a float64 computation: ``tests/test_models_wav2vec2.py``).

    Args:
        source: (B, S) float32 samples.
        conv: the one-channel first convolution.
        norm: ``GroupNorm(C, C)`` (:func:`_foldable_group_norm`).
        frames: (B,) valid frames per utterance (statistics over those only; the rest come out
            as the norm's bias, as :func:`~w2vtools.models.layers.masked_group_norm` gives), or
            None when nothing is padded.
        gelu: return ``F.gelu`` of that, applied to each block of rows while the GEMM's output
            is still in cache (inference only: in place). This layer's output is the model's
            largest tensor, so a separate pass over it ran from memory (BENCHMARKS.md, "Floor goals").
        out_dtype: the output's dtype. The GEMMs and GELU are float32 either way; a block is cast
            while in cache (bf16 autocast: what the next convolution reads, at half the bytes).

    Example:
        >>> conv, norm = nn.Conv1d(1, 8, 10, stride=5, bias=False), nn.GroupNorm(8, 8)
        >>> x = torch.randn(2, 400)
        >>> with torch.no_grad():
        ...     ref = norm(conv(x.unsqueeze(1))).transpose(1, 2)
        ...     torch.allclose(_waveform_conv_norm_as_gemm(x, conv, norm, None), ref, atol=1e-5)
        True
    """
    (k,), (stride,) = conv.kernel_size, conv.stride
    channels = conv.out_channels
    num_frames = max(0, (source.size(1) - k) // stride + 1)
    weight = conv.weight.detach().view(channels, k).double()
    gamma = norm.weight.detach().double() if norm.weight is not None else torch.ones(channels, dtype=torch.float64)
    beta = norm.bias.detach().float() if norm.bias is not None else source.new_zeros(channels)
    out = source.new_empty(source.size(0), num_frames, channels, dtype=out_dtype)
    rows = _ROWS_IN_CACHE if gelu or out_dtype != torch.float32 else num_frames
    scratch = source.new_empty(min(rows, num_frames), channels) if out_dtype != torch.float32 else None
    for b in range(source.size(0)):
        n = num_frames if frames is None else min(int(frames[b]), num_frames)
        if n == 0:
            continue
        used = (n - 1) * stride + k  # the samples the valid frames read
        centered = source[b, :used] - source[b, :used].mean()
        # (n, k + 1): the windows and a column of ones, which carries the shift through the
        # GEMM (addmm would first write the shift into every output row: a whole pass more)
        windows = source.new_ones(n, k + 1)
        windows[:, :k] = centered.unfold(0, k, stride)
        wins = windows[:, :k].double()
        mu = wins.mean(dim=0)
        sigma = torch.mm((wins - mu).t(), wins - mu) / n
        var = (torch.mm(weight, sigma) * weight).sum(dim=1)  # (C,): w_c' Sigma w_c
        scale = gamma * torch.rsqrt(var + norm.eps)
        # y = (x - mean) * scale + beta, x = windows @ w_c (+ the conv's bias, which the mean removes)
        folded = torch.cat([weight * scale[:, None], (beta.double() - torch.mv(weight, mu) * scale)[:, None]], dim=1)
        folded = folded.t().float()
        for i in range(0, n, rows):
            block = out[b, i : min(i + rows, n)]
            result = block if scratch is None else scratch[: block.size(0)]
            with torch.autocast("cpu", enabled=False):
                torch.mm(windows[i : i + block.size(0)], folded, out=result)
            if gelu:
                torch.ops.aten.gelu_(result)
            if scratch is not None:
                block.copy_(result)
        out[b, n:] = F.gelu(beta) if gelu else beta
    return out


_ROWS_IN_CACHE = 512  # output rows per GEMM when the activation follows (C = 512: 1 MB, an L2's size)


def _bf16_grouped_conv_pays(device_type: str) -> bool:
    """Whether autocast may run the positional convolution in its own dtype: only bfloat16 on
    a CPU with AMX tiles, where oneDNN's bf16 kernel took 43 ms forward and backward against
    float32's 195 ms (BASE, 4 x 4 s); with AVX512-BF16 alone bf16 was 1.4x slower than float32."""
    if device_type != "cpu" or torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return False
    return cpu_has_amx()


class WeightNormConv1d(nn.Module):
    """Conv1d with weight normalization over every dim but ``dim`` (fairseq: dim=2).

    Parameters ``weight_g``, ``weight_v``, ``bias`` are named like
    ``torch.nn.utils.weight_norm``'s (fairseq checkpoints). Without autograd the
    normalized weight is folded once and cached until a parameter changes.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int, dim: int = 2):
        super().__init__()
        self.channels, self.kernel_size, self.groups, self.norm_dim = channels, kernel_size, groups, dim
        self.padding = kernel_size // 2
        weight = torch.empty(channels, channels // groups, kernel_size)
        std = math.sqrt(4.0 / (kernel_size * channels))
        nn.init.normal_(weight, mean=0.0, std=std)
        self.weight_v = nn.Parameter(weight.clone())
        self.weight_g = nn.Parameter(self._norm(weight))
        self.bias = nn.Parameter(torch.zeros(channels))
        self._cache: tuple | None = None

    def _norm(self, v: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(v.dim()) if d != self.norm_dim]
        return v.norm(dim=dims, keepdim=True)

    def weight(self) -> torch.Tensor:
        """The effective weight g * v / ||v||."""
        if torch.is_grad_enabled() and (self.weight_g.requires_grad or self.weight_v.requires_grad):
            return self.weight_v * (self.weight_g / self._norm(self.weight_v))
        key = (self.weight_g._version, self.weight_v._version, self.weight_g.data_ptr(), self.weight_v.data_ptr(),
               self.weight_v.device, self.weight_v.dtype)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                w = self.weight_v * (self.weight_g / self._norm(self.weight_v))
            self._cache = (key, w)
        return self._cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T + 1 - kernel % 2); in float32 under autocast too, but for
        bfloat16 on a CPU with AMX (:func:`_bf16_grouped_conv_pays`)."""
        if torch.is_autocast_enabled(x.device.type) and not _bf16_grouped_conv_pays(x.device.type):
            # cuDNN's bf16 kernels for this grouped 128-tap convolution took most of a bf16 forward
            # on an H200, and oneDNN's are slower than float32 on CPUs without AMX (BENCHMARKS.md)
            with torch.autocast(x.device.type, enabled=False):
                return F.conv1d(x.float(), self.weight().float(), self.bias.float(), padding=self.padding,
                                groups=self.groups)
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the extra last frame an even-kernel 'same' convolution produces."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : -self.remove] if self.remove else x


class TransformerEncoder(nn.Module):
    """Convolutional relative positional embedding + Transformer blocks (+ layer drop)."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        d = cfg.encoder_embed_dim
        self.dropout = cfg.dropout
        self.layer_norm_first = cfg.layer_norm_first
        self.layerdrop = cfg.encoder_layerdrop
        self.pos_conv = nn.Sequential(WeightNormConv1d(d, cfg.conv_pos, cfg.conv_pos_groups), SamePad(cfg.conv_pos), nn.GELU())
        self.layers = nn.ModuleList(
            TransformerSentenceEncoderLayer(
                d, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads, dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
                activation_fn=cfg.activation_fn, layer_norm_first=cfg.layer_norm_first,
            )
            for _ in range(cfg.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(d)
        self.apply(_init_bert_params)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        tgt_layer: int | None = None,
        return_all: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the stack.

        Args:
            x: (B, T, C) projected features.
            padding_mask: (B, T) bool, True at padding.
            tgt_layer: stop after this many layers (0 = the Transformer input) and return
                that layer's raw output; None runs all layers and, for pre-LN models,
                applies the final layer norm.
            return_all: also return [input, layer 1, ..., layer N] (raw outputs).

        Returns:
            (output, hidden states list (empty unless return_all)).
        """
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x_conv = self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        x = x + x_conv
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = dropout(x, self.dropout, self.training)
        attn_mask = None
        if padding_mask is not None and bool(padding_mask.any()):
            attn_mask = (~padding_mask)[:, None, None, :]
        hidden = [x] if return_all else []
        if tgt_layer == 0:
            return x, hidden
        drop = None
        if self.training and self.layerdrop > 0:
            drop = (torch.rand(len(self.layers), device=x.device) < self.layerdrop).tolist()
        for i, layer in enumerate(self.layers):
            if drop is None or not drop[i]:
                x = layer(x, attn_mask)
            if return_all:
                hidden.append(x)
            if tgt_layer is not None and i + 1 >= tgt_layer:
                return x, hidden
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x, hidden


def _init_bert_params(module: nn.Module) -> None:
    # fairseq's init_bert_params for the Transformer: N(0, 0.02) linears, zero biases.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- the model


class Wav2Vec2Model(nn.Module):
    """wav2vec 2.0: feature encoder, masking, Transformer context network, quantizer.

    Example:
        >>> from w2vtools.models.presets import get_preset
        >>> model = Wav2Vec2Model(get_preset("wav2vec2", "tiny")).eval()
        >>> out = model.extract_features(torch.randn(2, 16000), layer="all")
        >>> len(out.features), out.features[-1].shape
        (3, torch.Size([2, 49, 64]))
    """

    family = "wav2vec2"
    sample_rate = 16000

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.cfg = cfg
        self.embed = cfg.conv_feature_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractionModel(
            cfg.conv_feature_layers, dropout=0.0, mode=cfg.extractor_mode, conv_bias=cfg.conv_bias
        )
        self.post_extract_proj = (
            nn.Linear(self.embed, cfg.encoder_embed_dim) if self.embed != cfg.encoder_embed_dim else None
        )
        self.dropout_input = Dropout(cfg.dropout_input)
        self.dropout_features = Dropout(cfg.dropout_features)
        self.mask_emb = nn.Parameter(torch.empty(cfg.encoder_embed_dim).uniform_())
        vq_dim = cfg.latent_dim if cfg.latent_dim > 0 else cfg.final_dim
        if cfg.quantize_targets:
            self.quantizer = GumbelVectorQuantizer(
                dim=self.embed,
                num_vars=cfg.latent_vars,
                temp=cfg.latent_temp,
                groups=cfg.latent_groups,
                combine_groups=False,
                vq_dim=vq_dim,
                time_first=True,
                weight_proj_depth=cfg.weight_proj_depth,
                weight_proj_factor=cfg.weight_proj_factor,
            )
            self.project_q = nn.Linear(vq_dim, cfg.final_dim)
        else:
            self.quantizer = None
            self.project_q = nn.Linear(self.embed, cfg.final_dim)
        self.encoder = TransformerEncoder(cfg)
        self.layer_norm = nn.LayerNorm(self.embed)
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, cfg.final_dim)
        self.num_updates = 0

    # ---- interface shared by every encoder

    @property
    def frame_shift(self) -> float:
        """Seconds between output frames (0.02 for the standard encoder)."""
        return math.prod(s for _, _, s in self.cfg.conv_feature_layers) / self.sample_rate

    @property
    def receptive_field(self) -> float:
        """Seconds of audio seen by one output frame of the feature encoder (0.025)."""
        return self.feature_extractor.receptive_field / self.sample_rate

    @property
    def num_layers(self) -> int:
        return self.cfg.encoder_layers

    def num_frames(self, num_samples: int) -> int:
        """Output frames for an input of ``num_samples`` samples."""
        n = int(num_samples)
        for _, k, s in self.cfg.conv_feature_layers:
            n = (n - k) // s + 1
        return max(n, 0)

    def set_num_updates(self, num_updates: int) -> None:
        """Anneal the quantizer temperature (called by the trainer every update)."""
        self.num_updates = num_updates
        if self.quantizer is not None:
            self.quantizer.set_num_updates(num_updates)

    # ---- internals

    def _normalize(self, source: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        # fairseq's task option `normalize`: F.layer_norm over the utterance (eps 1e-5),
        # here over each row's valid samples only, padding kept at zero.
        if lengths is None:
            return F.layer_norm(source, source.shape[-1:])
        valid = torch.arange(source.size(1), device=source.device).unsqueeze(0) < lengths.unsqueeze(1)
        n = lengths.clamp(min=1).to(source.dtype).unsqueeze(1)
        x = source.masked_fill(~valid, 0.0)
        mean = x.sum(-1, keepdim=True) / n
        var = ((x - mean).masked_fill(~valid, 0.0).pow(2)).sum(-1, keepdim=True) / n
        return ((x - mean) * torch.rsqrt(var + 1e-5)).masked_fill(~valid, 0.0)

    def _features(self, source, padding_mask, grad_mult: float):
        """Waveform -> (pre-layer-norm CNN features (B,T,C), frame padding mask or None)."""
        lengths = None
        if padding_mask is not None and bool(padding_mask.any()):
            lengths = (~padding_mask).long().sum(-1)
        if self.cfg.normalize:
            source = self._normalize(source, lengths)
        if grad_mult > 0:
            features = self.feature_extractor(source, lengths)
            if grad_mult != 1.0:
                features = _GradMultiply.apply(features, grad_mult)
        else:
            with torch.no_grad():
                features = self.feature_extractor(source, lengths)
        frame_mask = None
        if lengths is not None:
            out_len = self.feature_extractor.output_lengths(lengths)
            frame_mask = torch.arange(features.size(1), device=features.device).unsqueeze(0) >= out_len.unsqueeze(1)
        return features, frame_mask

    def apply_mask(self, x: torch.Tensor, padding_mask: torch.Tensor | None, require_same_masks: bool | None = None):
        """Time masking with the learned ``mask_emb`` and channel masking with zeros.

        Returns:
            (masked x, (B, T) bool time mask or None).
        """
        cfg = self.cfg
        b, t, c = x.shape
        mask_indices = None
        if cfg.mask_prob > 0:
            mask_indices = compute_mask_indices(
                (b, t),
                padding_mask,
                cfg.mask_prob,
                cfg.mask_length,
                min_masks=cfg.mask_min_masks,
                no_overlap=cfg.no_mask_overlap,
                min_space=cfg.mask_min_space,
                require_same_masks=cfg.require_same_masks if require_same_masks is None else require_same_masks,
                device=x.device,
            )
            x = torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        if cfg.mask_channel_prob > 0:
            channel_mask = compute_mask_indices(
                (b, c),
                None,
                cfg.mask_channel_prob,
                cfg.mask_channel_length,
                no_overlap=cfg.no_mask_channel_overlap,
                min_space=cfg.mask_channel_min_space,
                device=x.device,
            )
            x = x.masked_fill(channel_mask.unsqueeze(1), 0.0)
        return x, mask_indices

    # ---- feature extraction

    def extract_features(
        self,
        source: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        *,
        output: str = "layer",
        layer: int | str | None = None,
        mask: bool = False,
    ) -> FeatureOutput:
        """Frame-level representations.

        Args:
            source: (B, S) float waveform at 16 kHz.
            padding_mask: (B, S) bool, True at padding.
            output: "layer" (or "default", "c"): Transformer outputs; "z": the feature
                encoder output after its layer norm (Hugging Face's ``extract_features``).
            layer: with output "layer": None = final output (for pre-LN models after the
                final layer norm), N = raw output of layer N (0 = Transformer input),
                "all" = list of all N+1 raw outputs.
            mask: apply time/channel masking (fine-tuning); only honoured in train mode.

        Returns:
            FeatureOutput with (B, T, D) features (a list for ``layer="all"``) and the
            (B, T) frame padding mask (None when nothing is padded).

        Example:
            >>> out = model.extract_features(wav, pad, layer=6)  # doctest: +SKIP
        """
        if output in ("default", "c"):
            output = "layer"
        if output not in ("layer", "z"):
            raise ValueError(f"wav2vec 2.0 offers output 'layer' or 'z', not {output!r}")
        grad_mult = self.cfg.feature_grad_mult if self.training else 1.0
        features, frame_mask = self._features(source, padding_mask, grad_mult)
        features = self.layer_norm(features)
        if output == "z":
            return FeatureOutput(features, frame_mask)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        x = self.dropout_input(features)
        if mask and self.training:
            x, _ = self.apply_mask(x, frame_mask, require_same_masks=False)
        n_layers = self.cfg.encoder_layers
        if layer == "all":
            _, hidden = self.encoder(x, frame_mask, tgt_layer=None, return_all=True)
            return FeatureOutput(hidden, frame_mask)
        if layer is not None:
            layer = int(layer)
            if not 0 <= layer <= n_layers:
                raise ValueError(f"layer must be in 0..{n_layers}, not {layer}")
        x, _ = self.encoder(x, frame_mask, tgt_layer=layer)
        return FeatureOutput(x, frame_mask)

    @torch.no_grad()
    def quantize(self, source: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, G) codebook indices of the quantizer's arg-max choices; -1 at padded frames.

        Example:
            >>> codes = model.quantize(torch.randn(1, 16000))  # doctest: +SKIP
        """
        if self.quantizer is None:
            raise ValueError("this wav2vec 2.0 model has no quantizer (quantize_targets=False)")
        features, frame_mask = self._features(source, padding_mask, 1.0)
        logits = self.quantizer.logits(self.layer_norm(features))
        codes = logits.argmax(-1)
        if frame_mask is not None:
            codes = codes.masked_fill(frame_mask.unsqueeze(-1), -1)
        return codes

    # ---- pretraining

    def sample_negatives(self, y: torch.Tensor, num: int) -> torch.Tensor:
        """Distractor indices for the targets y (B, M, C): (B, M, N) rows of ``y.reshape(B*M, C)``.

        ``num_negatives`` per target come uniformly from the other M-1 masked frames of
        the same utterance, then ``cross_sample_negatives`` from anywhere in the batch but
        the target itself (fairseq's sampling, drawn on y's device). Indices, not vectors:
        :meth:`compute_preds` scores them from one similarity matrix.
        """
        cfg = self.cfg
        b, m, _ = y.shape
        pos = torch.arange(num, device=y.device).unsqueeze(-1)
        idx_list = []
        if cfg.num_negatives > 0:
            if m < 2:
                raise ValueError("need at least 2 masked frames per utterance to sample distractors")
            # uniform over the other m-1 masked frames of the same utterance
            neg = torch.randint(0, m - 1, (b, num, cfg.num_negatives), device=y.device)
            neg = neg + (neg >= pos).long()
            idx_list.append(neg + (torch.arange(b, device=y.device) * m).view(b, 1, 1))
        if cfg.cross_sample_negatives > 0:
            if b * m < 2:
                raise ValueError("need at least 2 masked frames in the batch for cross-sample distractors")
            own = (torch.arange(b, device=y.device) * m).view(b, 1, 1) + pos
            cross = torch.randint(0, b * m - 1, (b, num, cfg.cross_sample_negatives), device=y.device)
            idx_list.append(cross + (cross >= own).long())
        return torch.cat(idx_list, dim=-1)  # (B, M, N)

    def compute_preds(self, x: torch.Tensor, y: torch.Tensor, neg_idx: torch.Tensor) -> torch.Tensor:
        """Cosine similarity / logit_temp of each x with its target y and its distractors.

        Args:
            x: (B, M, C) context vectors at the masked frames.
            y: (B, M, C) their (quantized, projected) targets.
            neg_idx: (B, M, N) distractor rows of ``y.reshape(B*M, C)`` (:meth:`sample_negatives`).

        Returns:
            (1+N, B, M) logits, index 0 the true target; a distractor equal to the target
            (the same code chosen twice) gets -inf, as in fairseq.

        fairseq gathers the distractors into a (N, B, M, C) tensor and takes cosines over
        it; here x and y are normalised once and every pair's cosine comes from one
        matrix product (per utterance when all distractors are from the same utterance),
        then the distractors' entries are gathered. Same values to rounding, about
        N x less memory, and the gradient is two small GEMMs instead of passes over
        (N, B, M, C) tensors.
        """
        b, m, c = y.shape
        n = neg_idx.size(-1)
        xn = F.normalize(x.float(), dim=-1, eps=1e-8)
        yn = F.normalize(y.float(), dim=-1, eps=1e-8)
        positive = (xn * yn).sum(-1)  # (B, M)
        if self.cfg.cross_sample_negatives > 0:
            sim = xn.reshape(b * m, c) @ yn.reshape(b * m, c).t()  # (B*M, B*M)
            negative = sim.gather(1, neg_idx.reshape(b * m, n)).view(b, m, n)
        else:
            sim = torch.bmm(xn, yn.transpose(1, 2))  # (B, M, M)
            local = neg_idx - (torch.arange(b, device=neg_idx.device) * m).view(b, 1, 1)
            negative = sim.gather(2, local)
        logits = torch.cat([positive.unsqueeze(-1), negative], dim=-1) / self.cfg.logit_temp  # (B, M, 1+N)
        logits = logits.type_as(x)
        # exact duplicates of the target: the same row id after torch.unique
        row_id = torch.unique(y.detach().reshape(b * m, c), dim=0, return_inverse=True)[1]
        neg_is_pos = row_id[neg_idx] == row_id.view(b, m, 1)
        if bool(neg_is_pos.any()):  # -inf in every dtype (fairseq's -2**30 is for XLA; it overflows float16)
            logits = torch.cat([logits[..., :1], logits[..., 1:].masked_fill(neg_is_pos, float("-inf"))], dim=-1)
        return logits.permute(2, 0, 1)

    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor | None = None) -> dict:
        """The pretraining forward: mask, contextualize, quantize, score distractors.

        Returns:
            dict with ``x`` (1+N, B, M) logits (index 0 = the true quantized target),
            ``padding_mask``, ``mask_indices``, ``features_pen``, and the quantizer's
            ``prob_perplexity``, ``code_perplexity``, ``num_vars``, ``temp``.
        """
        cfg = self.cfg
        grad_mult = cfg.feature_grad_mult if self.training else 1.0
        features, frame_mask = self._features(source, padding_mask, grad_mult)
        features_pen = features.float().pow(2).mean()
        features = self.layer_norm(features)
        unmasked = features
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        features = self.dropout_input(features)
        unmasked = self.dropout_features(unmasked)
        x, mask_indices = self.apply_mask(features, frame_mask, require_same_masks=True)
        if mask_indices is None:
            raise ValueError("pretraining needs mask_prob > 0")
        b = x.size(0)
        y = unmasked[mask_indices].view(b, -1, unmasked.size(-1))
        x, _ = self.encoder(x, frame_mask)
        result: dict = {"padding_mask": frame_mask, "mask_indices": mask_indices, "features_pen": features_pen}
        if self.quantizer is not None:
            q = self.quantizer(y, produce_targets=False)
            y = q["x"]
            for key in ("num_vars", "code_perplexity", "prob_perplexity", "temp"):
                result[key] = q[key]
        y = self.project_q(y)
        neg_idx = self.sample_negatives(y, y.size(1))
        x = x[mask_indices].view(b, -1, x.size(-1))
        x = self.final_proj(x)
        result["x"] = self.compute_preds(x, y, neg_idx)
        return result

    def pretraining_loss(self, net_output: dict) -> tuple[torch.Tensor, int, dict]:
        """fairseq's wav2vec criterion (InfoNCE): summed loss, sample size and stats.

        loss = sum of cross-entropies (target index 0) over masked frames
             + diversity_weight * (num_vars - prob_perplexity) / num_vars * sample_size
             + feature_pen_weight * features_pen * sample_size.

        Returns:
            (loss_sum, sample_size, stats) where stats holds plain floats: ``loss``,
            ``contrastive_loss``, ``diversity_loss``, ``features_pen``, ``correct``,
            ``count``, ``accuracy``, ``code_perplexity``, ``prob_perplexity``, ``temp``.
        """
        logits = net_output["x"]  # (1+N, B, M)
        logits = logits.transpose(0, 2).reshape(-1, logits.size(0))  # (M*B, 1+N)
        target = torch.zeros(logits.size(0), dtype=torch.long, device=logits.device)
        contrastive = F.cross_entropy(logits.float(), target, reduction="sum")
        sample_size = target.numel()
        loss = contrastive
        stats: dict = {"contrastive_loss": float(contrastive.detach())}
        if "prob_perplexity" in net_output and self.cfg.diversity_weight:
            num_vars = net_output["num_vars"]
            div = (num_vars - net_output["prob_perplexity"]) / num_vars
            div_term = self.cfg.diversity_weight * div.float() * sample_size
            loss = loss + div_term
            stats["diversity_loss"] = float(div_term.detach())
        if self.cfg.feature_pen_weight:
            pen_term = self.cfg.feature_pen_weight * net_output["features_pen"].float() * sample_size
            loss = loss + pen_term
            stats["features_pen"] = float(pen_term.detach())
        with torch.no_grad():
            if logits.numel():
                is_max = logits.argmax(-1) == 0
                is_min = logits.argmin(-1) == 0
                correct = int(is_max.sum() - (is_max & is_min).sum())
            else:
                correct = 0
        stats.update(
            loss=float(loss.detach()),
            correct=correct,
            count=sample_size,
            accuracy=correct / max(sample_size, 1),
            sample_size=sample_size,
        )
        for key in ("code_perplexity", "prob_perplexity", "temp"):
            if key in net_output:
                stats[key] = float(torch.as_tensor(net_output[key]).detach())
        return loss, sample_size, stats
