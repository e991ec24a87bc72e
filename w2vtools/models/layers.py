"""Building blocks shared by the model families.

Example:
    >>> norm = Fp32GroupNorm(1, 4)
    >>> norm(torch.randn(2, 4, 7), torch.zeros(2, 7, dtype=torch.bool)).shape
    torch.Size([2, 4, 7])
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel


def receptive_field(layers) -> int:
    """Input steps that one output frame of a stack of ``(channels, kernel, stride)``
    convolutions sees: the shortest input that gives a frame.

    Example:
        >>> receptive_field([(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2)  # wav2vec 2.0
        400
    """
    rf, jump = 1, 1
    for _, kernel, stride in layers:
        rf += (kernel - 1) * jump
        jump *= stride
    return rf


def masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``norm`` applied to (B, C, T) in float32, statistics over each row's valid frames only.

    Without ``padding_mask`` this is exactly ``F.group_norm`` computed in float32
    (fairseq's Fp32GroupNorm, safe under fp16 autocast). With ``padding_mask``
    (B, T, True = pad), padded frames are left out of each group's mean and
    variance, so a padded utterance is normalized exactly as it would be alone;
    a padded frame comes out as the bias (as if its normalized value were 0), so
    nothing in the padding depends on what was there.

    Example:
        >>> x = torch.randn(1, 4, 5)
        >>> padded = torch.cat([x, torch.zeros(1, 4, 3)], dim=2)
        >>> mask = torch.tensor([[False] * 5 + [True] * 3])
        >>> norm = nn.GroupNorm(2, 4)
        >>> torch.allclose(masked_group_norm(padded, norm, mask)[..., :5], masked_group_norm(x, norm), atol=1e-5)
        True
    """
    weight = norm.weight.float() if norm.weight is not None else None
    bias = norm.bias.float() if norm.bias is not None else None
    if padding_mask is None:
        return F.group_norm(x.float(), norm.num_groups, weight, bias, norm.eps).type_as(x)
    valid = (~padding_mask).float()
    with torch.autocast(x.device.type, enabled=False):
        y = _MaskedGroupNorm.apply(x.float(), valid, weight, bias, norm.num_groups, norm.eps)
    return y.type_as(x)


class _MaskedGroupNorm(torch.autograd.Function):
    """Group norm over valid frames, with a hand-written backward.

    Autograd through the dozen elementwise ops of the plain formula made the
    first convolution block's norm cost as much as its convolution on a CPU
    (each op a pass over a (B, C, T) tensor at the audio's frame rate); here the
    forward and the backward take six passes each, the reductions as
    dot products. ``tests/test_models_layers.py`` checks it with gradcheck.
    """

    @staticmethod
    def _group_means(channel_sums: torch.Tensor, groups: int, count: torch.Tensor) -> torch.Tensor:
        """(B, C) sums over each channel's valid frames -> (B, C) mean over the channel's group."""
        bsz, channels = channel_sums.shape
        means = channel_sums.view(bsz, groups, channels // groups).sum(dim=2) / count
        return means.repeat_interleave(channels // groups, dim=1)

    @staticmethod
    def forward(ctx, x, valid, weight, bias, groups: int, eps: float):  # noqa: D102 (x: (B, C, T), valid: (B, T))
        per_group = x.shape[1] // groups
        count = (valid.sum(dim=1, keepdim=True) * per_group).clamp(min=1)  # (B, 1): values per group
        group_means = _MaskedGroupNorm._group_means
        mask = valid[:, None, :]
        mean = group_means(torch.linalg.vecdot(x, mask), groups, count)
        centered = (x - mean[..., None]).mul_(mask)  # zero at padded frames
        rstd = torch.rsqrt(group_means(torch.linalg.vecdot(centered, centered), groups, count) + eps)
        scale = rstd if weight is None else rstd * weight
        y = centered * scale[..., None]
        if bias is not None:
            y.add_(bias.view(1, -1, 1))
        ctx.save_for_backward(centered, valid, rstd, weight)
        ctx.groups, ctx.count, ctx.has_bias = groups, count, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: D102
        centered, valid, rstd, weight = ctx.saved_tensors
        groups, count = ctx.groups, ctx.count
        group_means = _MaskedGroupNorm._group_means
        mask = valid[:, None, :]
        grad_valid = torch.linalg.vecdot(grad, mask)  # sum of dy over valid frames
        grad_xhat = torch.linalg.vecdot(grad, centered) * rstd  # sum of dy * xhat (xhat is 0 at padding)
        w = torch.ones_like(rstd) if weight is None else weight.expand_as(rstd)
        # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) on valid frames, g = dy * w
        mean_g = group_means(w * grad_valid, groups, count)
        mean_gx = group_means(w * grad_xhat, groups, count)
        dx = (grad * (rstd * w)[..., None]).sub_((rstd * mean_g)[..., None])
        dx.addcmul_(centered, (-rstd * rstd * mean_gx)[..., None]).mul_(mask)
        dw = grad_xhat.sum(dim=0) if weight is not None else None
        db = grad.sum(dim=(0, 2)) if ctx.has_bias else None
        return dx, None, dw, db, None, None


class Fp32GroupNorm(nn.GroupNorm):
    """Group norm computed in float32 (fairseq's Fp32GroupNorm), optionally over valid frames only.

    See :func:`masked_group_norm`; a mask without padding is the unmasked case.

    Example:
        >>> Fp32GroupNorm(2, 4)(torch.randn(3, 4, 7)).shape
        torch.Size([3, 4, 7])
    """

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if padding_mask is not None and not bool(padding_mask.any()):
            padding_mask = None
        return masked_group_norm(x, self, padding_mask)


# --------------------------------------------------------------------------- strided convolutions


def time_major_conv_applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`conv1d_time_major` computes ``conv`` on ``x``: a plain convolution (no
    padding, dilation or groups) on the CPU, in float32, or under bfloat16 autocast on a CPU
    with native bf16 GEMMs (:func:`cpu_has_native_bf16`). Elsewhere (cuDNN on GPU, float16
    autocast, bf16 autocast on other CPUs, the int8 modules) the convolution runs as it is."""
    if not (type(conv) is nn.Conv1d and conv.padding == (0,) and conv.dilation == (1,) and conv.groups == 1
            and x.device.type == "cpu"):
        return False
    dtype = autocast_dtype("cpu")
    if dtype is not None:
        return dtype == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16) and cpu_has_native_bf16()
    return x.dtype == torch.float32


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast gives convolutions and GEMMs on ``device_type`` now, None when it is off."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 and int8 matrix units)."""
    supported = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(supported()) if supported is not None else False


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 products in hardware (AMX tiles or AVX512-BF16), where
    oneDNN's bf16 GEMMs run at or above float32's speed; elsewhere they are emulated, and a
    bf16 GEMM took twice as long as oneDNN's bf16 convolution (BENCHMARKS.md)."""
    supported = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return cpu_has_amx() or (bool(supported()) if supported is not None else False)


def conv1d_time_major(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv`` on time-major frames: (B, S, C) -> (B, T, C'), forward and backward as GEMMs.

    A frame-strided convolution is a GEMM over windows of ``k`` frames. In time-major memory
    the windows that start every ``stride`` frames are rows ``stride * C`` apart, a matrix
    BLAS reads in place, so no window is ever copied: the ``k`` taps split into
    ``ceil(k / stride)`` blocks of at most ``stride`` frames, each one strided matrix. The
    input and weight gradients are GEMMs over the same views, the input's accumulated in
    place. oneDNN's direct convolution computes the same sums in another order; its
    backward pass, plus the layout copies it makes, is what this replaces (BENCHMARKS.md,
    "Pretraining step").

    Under CPU bf16 autocast the GEMMs run in bf16, as autocast runs a convolution, and the
    output is bf16; the weight and bias gradients are summed in float32 and the input
    gradient comes back in the input's dtype.

    Example:
        >>> conv = nn.Conv1d(4, 6, 3, stride=2)
        >>> x = torch.randn(2, 11, 4)
        >>> torch.allclose(conv1d_time_major(x, conv), conv(x.transpose(1, 2)).transpose(1, 2), atol=1e-6)
        True
    """
    return _TimeMajorConv.apply(x, conv.weight, conv.bias, conv.stride[0], autocast_dtype("cpu") or x.dtype)


def copy_between_layouts(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``dst.copy_(src)`` for (B, S, C) tensors of which one is time-major and the other
    channels-first memory (any dtypes), in cache-sized blocks; returns ``dst``.

    One ``copy_`` across the two layouts strides through memory a whole row apart on one
    side, and ran at a third to half of the speed of these blocks: 16 channels at a time
    into time-major memory, 256 frames at a time into channels-first (BENCHMARKS.md).

    Example:
        >>> src = torch.randn(2, 40, 300).transpose(1, 2)  # channels-first memory
        >>> torch.equal(copy_between_layouts(torch.empty(2, 300, 40), src), src)
        True
    """
    if dst.dim() != 3 or dst.shape != src.shape or dst.stride() == src.stride():
        return dst.copy_(src)
    if dst.is_contiguous():  # into time-major: a block of channels, each read along time
        for b in range(dst.size(0)):
            for c in range(0, dst.size(2), _CHANNELS_PER_COPY):
                dst[b, :, c : c + _CHANNELS_PER_COPY].copy_(src[b, :, c : c + _CHANNELS_PER_COPY])
    else:  # into channels-first: a block of frames, each read along channels
        for b in range(dst.size(0)):
            for t in range(0, dst.size(1), _FRAMES_PER_COPY):
                dst[b, t : t + _FRAMES_PER_COPY].copy_(src[b, t : t + _FRAMES_PER_COPY])
    return dst


_CHANNELS_PER_COPY = 16
_FRAMES_PER_COPY = 256


def _tap_blocks(x: torch.Tensor, kernel: int, stride: int, frames: int):
    """For each utterance, ``[(view, first_tap, taps)]``: the (frames, taps * C) matrices whose
    row t is frames ``t * stride + first_tap ... + taps - 1`` of ``x`` (B, S, C), flattened."""
    channels = x.size(2)
    blocks = []
    for b in range(x.size(0)):
        xb = x[b]
        views = []
        for first in range(0, kernel, stride):
            taps = min(stride, kernel - first)
            view = xb.as_strided((frames, taps * channels), (stride * channels, 1), xb.storage_offset() + first * channels)
            views.append((view, first, taps))
        blocks.append(views)
    return blocks


class _TimeMajorConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, dtype=None):
        out_channels, channels, kernel = weight.shape
        frames = (x.size(1) - kernel) // stride + 1
        if frames <= 0:
            raise ValueError(f"{x.size(1)} frames are fewer than the kernel ({kernel})")
        dtype = dtype or x.dtype
        # The input gradient goes back in the input's layout: given channels-first memory (the
        # first block's norm and GELU), a time-major gradient would reach their backward ops with
        # strides unlike their saved tensors', which makes elementwise kernels 4-8x slower
        # (BENCHMARKS.md, "Small training steps"); one copy here costs less.
        ctx.channels_first = not x.is_contiguous() and x.transpose(1, 2).is_contiguous()
        ctx.input_dtype = x.dtype
        if x.dtype != dtype or not x.is_contiguous():
            x = copy_between_layouts(torch.empty(x.shape, dtype=dtype), x)
        with torch.autocast("cpu", enabled=False):  # every operand is already in ``dtype``
            w = weight.to(dtype).permute(0, 2, 1).reshape(out_channels, kernel * channels)  # column j*C + c: tap j, channel c
            y = x.new_empty(x.size(0), frames, out_channels)
            for b, views in enumerate(_tap_blocks(x, kernel, stride, frames)):
                for n, (view, first, taps) in enumerate(views):
                    wq = w[:, first * channels : (first + taps) * channels].t()
                    if n == 0 and bias is not None:
                        torch.addmm(bias.to(dtype), view, wq, out=y[b])
                    elif n == 0:
                        torch.mm(view, wq, out=y[b])
                    else:
                        y[b].addmm_(view, wq)
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        out_channels, channels, kernel = weight.shape
        grad = grad.to(x.dtype).contiguous()
        frames = grad.size(1)
        w = weight.to(x.dtype).permute(0, 2, 1).reshape(out_channels, kernel * channels)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.zeros_like(x)
            for b, views in enumerate(_tap_blocks(dx, kernel, ctx.stride, frames)):
                for view, first, taps in views:
                    view.addmm_(grad[b], w[:, first * channels : (first + taps) * channels])
            if ctx.channels_first:
                dx = copy_between_layouts(torch.empty(dx.shape[0], dx.shape[2], dx.shape[1], dtype=ctx.input_dtype)
                                          .transpose(1, 2), dx)
            else:
                dx = dx.to(ctx.input_dtype)
        if ctx.needs_input_grad[1]:
            dw_flat = weight.new_zeros(out_channels, kernel * channels)
            for b, views in enumerate(_tap_blocks(x, kernel, ctx.stride, frames)):
                for view, first, taps in views:
                    cols = dw_flat[:, first * channels : (first + taps) * channels]
                    if x.dtype == dw_flat.dtype:
                        cols.addmm_(grad[b].t(), view)
                    else:  # bf16 products, summed over utterances in float32 (no mixed-dtype addmm)
                        cols += torch.mm(grad[b].t(), view)
            dw = dw_flat.view(out_channels, kernel, channels).permute(0, 2, 1).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.sum(dim=(0, 1), dtype=weight.dtype)
        return dx, dw, db, None, None


# --------------------------------------------------------------------------- Transformer blocks

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout``, with a cheaper mask on CPU.

    On CPU, ``F.dropout`` draws a float Bernoulli tensor (``bernoulli_``, about 2x
    slower than uniforms on 2 cores) and keeps it for the backward pass; a BASE
    training step spent 5 % of its time there. Here the mask comes from
    :func:`keep_mask`, kept as bools (a quarter of the memory): the same distribution
    with p rounded to 1/65536, a different random stream. On GPU, PyTorch's fused
    kernel is used as is.
    """
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    keep, p_used = keep_mask(x.shape, p, x.device)
    return x * keep * (1.0 / (1.0 - p_used))


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """Bools that are False with probability p rounded to 1/65536, and that rounded p.

    Why not ``torch.rand(shape) >= p``: the CPU generator makes one float per draw, and in a
    BASE training step the dropout masks' uniforms took 0.14 s, 4 % of a float32 step and 7 %
    of a bf16 one. Here each 64-bit draw gives four 16-bit integers, 3-4x faster
    (BENCHMARKS.md). The draws span the whole int64 range, so every 16-bit lane is uniform
    (``random_()`` without a range leaves the top bit 0).

    Example:
        >>> keep, p_used = keep_mask((1000,), 0.1)
        >>> keep.dtype, p_used
        (torch.bool, 0.100006103515625)
    """
    count = math.prod(shape)
    threshold = min(round(p * 65536), 65535) - 32768
    draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    keep = draws.view(torch.int16)[:count].view(shape) >= threshold
    return keep, (threshold + 32768) / 65536


class Dropout(nn.Dropout):
    """``nn.Dropout`` computed by :func:`dropout` (same name, same ``p``, no state)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class MultiheadAttention(nn.Module):
    """Self-attention with fairseq's parameter names, computed by SDPA on a fused q/k/v GEMM."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self._cache: tuple | None = None
        # one fused projection replacing q/k/v_proj, set by int8 quantization (models/int8.py)
        self.qkv_proj: nn.Module | None = None

    def _qkv_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        params = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return torch.cat(params[:3]), torch.cat(params[3:])
        key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, torch.cat(params[:3]), torch.cat(params[3:]))
        return self._cache[1], self._cache[2]

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, T, C); attn_mask: bool, broadcastable to (B, H, T, T), True where a key may be attended, or None."""
        b, t, c = x.shape
        if self.qkv_proj is not None:
            qkv = self.qkv_proj(x)
        else:
            qkv = F.linear(x, *self._qkv_weights())
        qkv = qkv.view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.training and self.dropout > 0 and x.device.type == "cpu":
            # SDPA's CPU path with dropout is this same math with F.dropout's slow mask
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = torch.matmul(q, k.transpose(-2, -1)) * (self.head_dim**-0.5)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            out = torch.matmul(dropout(scores.softmax(-1), self.dropout, True).to(v.dtype), v)
        else:
            with masked_cuda_sdpa() if attn_mask is not None and x.is_cuda else contextlib.nullcontext():
                out = F.scaled_dot_product_attention(
                    qkv[0], qkv[1], qkv[2], attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
                )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


def masked_cuda_sdpa():
    """SDPA's backends for a padded batch on CUDA: every one but cuDNN's.

    In half precision on an H200 (torch 2.11), PyTorch picks cuDNN attention for a masked call
    too, and there each call cost about 4 ms of host time even on shapes already seen: 12 layers
    of a padded batch then took longer on the CPU than the whole forward on the GPU, and
    ``featurize --amp`` ran at half the speed of float32 (BENCHMARKS.md, GPU). Without cuDNN's
    (the memory-efficient kernel takes the mask) it ran as fast as float32. Unmasked calls
    (fixed-size training batches, one utterance alone) keep PyTorch's choice: there cuDNN's
    graph is cached per shape. ``sdpa_kernel`` sets process-wide flags: with several GPU streams
    (``--streams``) their entries and exits can interleave, which changes only which kernel
    computes a call (the same attention, up to rounding).
    """
    return sdpa_kernel(_MASKED_CUDA_BACKENDS)


_MASKED_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class TransformerSentenceEncoderLayer(nn.Module):
    """One Transformer block with fairseq's names; post-LN (BASE, RoBERTa) or pre-LN (``layer_norm_first``, LARGE/XLS-R).

    Example:
        >>> layer = TransformerSentenceEncoderLayer(8, 16, 2)
        >>> layer(torch.randn(3, 5, 8), None).shape
        torch.Size([3, 5, 8])
    """

    def __init__(
        self,
        embed_dim: int,
        ffn_embed_dim: int,
        attention_heads: int,
        *,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        activation_fn: str = "gelu",
        layer_norm_first: bool = False,
    ):
        super().__init__()
        d = embed_dim
        self.layer_norm_first = layer_norm_first
        self.self_attn = MultiheadAttention(d, attention_heads, attention_dropout)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(activation_dropout)
        self.dropout3 = Dropout(dropout)
        self.activation = ACTIVATIONS[activation_fn]
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn_embed_dim)
        self.fc2 = nn.Linear(ffn_embed_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), attn_mask))
            h = self.fc2(self.dropout2(self.activation(self.fc1(self.final_layer_norm(x)))))
            return x + self.dropout3(h)
        x = self.self_attn_layer_norm(x + self.dropout1(self.self_attn(x, attn_mask)))
        h = self.fc2(self.dropout2(self.activation(self.fc1(x))))
        return self.final_layer_norm(x + self.dropout3(h))
