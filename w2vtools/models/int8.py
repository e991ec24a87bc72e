"""Dynamic int8 quantization of a model for CPU inference (``--int8`` of featurize, decode, align).

:func:`quantize_int8` rewrites a model in place so that its big matrix products run as
int8 x int8 -> int32 GEMMs (oneDNN on x86, fbgemm elsewhere; VNNI where the CPU has it):

* every ``nn.Linear`` becomes an :class:`Int8Linear`: weights int8 with one scale per output
  channel, packed once; activations quantized per call with the range of that call's
  input (no calibration data needed);
* the attention's q, k and v projections are first fused into one ``qkv_proj`` linear
  (:class:`~w2vtools.models.layers.MultiheadAttention` runs the fused GEMM either way);
* every dense 1-D convolution with enough input per output (``in_channels * kernel >=``
  :data:`MIN_CONV_DEPTH`: the wav2vec 2.0 feature encoder's layers 2-7, wav2vec's encoder and
  aggregator) becomes :class:`Int8Conv1d`: the same convolution as windows of frames times
  an int8 weight matrix. Torch's own dynamic ``Conv1d`` is not used: on torch 2.14 its
  output is wrong (70 % relative error against float32 on the BASE feature encoder's shape);
* wav2vec 2.0's grouped positional convolution becomes :class:`Int8PositionalConv`, oneDNN's
  int8 convolution (where torch has oneDNN's int8 kernels and its kernel for that shape passes
  a check against integer sums; float32 otherwise).

Activations use 8 bits on CPUs with VNNI and 7 without (:func:`full_range_activations`).

What stays float32: norms, activations, attention scores (softmax), vector quantizers
(:data:`KEEP_FLOAT`), the first convolution of the feature encoder (one input channel: its
GEMM is tiny, its cost is the norm that follows), and LSTMs. Speed and error against
float32 are measured in BENCHMARKS.md (``benchmarks/bench_int8.py``).

The quantized model is for inference on a CPU only: quantized kernels have no CUDA or
autograd implementation.

Example:
    >>> import torch
    >>> from w2vtools.models.presets import get_preset
    >>> from w2vtools.models.wav2vec2 import Wav2Vec2Model
    >>> model = Wav2Vec2Model(get_preset("wav2vec2", "tiny")).eval()
    >>> counts = quantize_int8(model)
    >>> counts["linear"] > 0, counts["conv"] > 0
    (True, True)
"""

from __future__ import annotations

import logging
import platform
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from w2vtools.models.layers import MultiheadAttention
from w2vtools.models.quantizers import GumbelVectorQuantizer, KmeansVectorQuantizer
from w2vtools.models.wav2vec2 import WeightNormConv1d

log = logging.getLogger("w2v.int8")

#: Modules left in float32 with everything inside them: a vector quantizer picks a discrete
#: code by argmax, and int8 noise would flip the near ties (its layers cost little).
KEEP_FLOAT = (GumbelVectorQuantizer, KmeansVectorQuantizer)

#: A convolution whose im2col rows are shorter than this stays float32: a short GEMM
#: inner dimension gains nothing from int8 (and raw audio, one channel, loses precision).
MIN_CONV_DEPTH = 64


def full_range_activations() -> bool:
    """Whether activations may use all 8 bits: on CPUs with VNNI (AVX512-VNNI, AVX-VNNI).

    Without VNNI, fbgemm multiplies u8 x s8 pairs into saturating int16 sums, so torch
    quantizes activations to 7 bits (``reduce_range``); with VNNI the products accumulate
    in int32 and the eighth bit is free precision (activation error 1.9 % -> 1.2 % on a
    GELU-activated 1536 -> 512 layer).
    """
    supported = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(supported()) if supported is not None else False


def onednn_available() -> bool:
    """Whether torch has oneDNN's int8 matmul (``onednn::qlinear_pointwise``): x86 builds do.

    oneDNN takes int8 activations that we quantize ourselves, so a caller that knows its
    activations' range (:class:`Int8Conv1d`) skips the range-finding pass, and its GEMMs ran
    faster than fbgemm's on the shapes of wav2vec 2.0 (BENCHMARKS.md, section int8).
    """
    op = getattr(torch.ops.onednn, "qlinear_pointwise", None)
    return op is not None and torch.backends.mkldnn.is_available() and platform.machine().lower() in ("x86_64", "amd64")


def activation_levels() -> int:
    """The largest unsigned activation integer: 255 with VNNI, 127 without (see
    :func:`full_range_activations`)."""
    return 255 if full_range_activations() else 127


def peak_magnitude(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The largest ``|value|`` along ``dim``, from two plain reductions (``amax`` and ``amin``):
    faster on torch 2.14's CPU than an inf-norm or a fused ``aminmax`` over that dim.

    Example:
        >>> peak_magnitude(torch.tensor([[0.5, -2.0], [1.0, 0.25]]), 1).tolist()
        [2.0, 1.0]
    """
    return torch.maximum(x.amax(dim), x.amin(dim).neg())


def _uint8_view(q: torch.Tensor) -> torch.Tensor:
    """The integers of a quint8 tensor as a plain uint8 tensor on the same memory (``int_repr``
    copies)."""
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())


def quantize_activations(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``round(x / scale) + zero_point`` as uint8, clamped to [0, 255], in one pass (fbgemm's
    vectorized quantizer; ``torch.round(...).to(torch.uint8)`` takes three times as long)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated in torch 2.10+ (kernels unchanged)
        return _uint8_view(torch.quantize_per_tensor(x, scale, zero_point, torch.quint8))


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization with one scale per output channel (dim 0), as torch's
    ``per_channel_dynamic_qconfig`` does it: ``(int8 integers, float32 scales)``,
    ``weight ~ integers * scales``.

    Example:
        >>> integers, scales = quantize_weight(torch.tensor([[0.5, -1.0], [2.0, 1.0]]))
        >>> integers.tolist()
        [[64, -127], [127, 64]]
    """
    flat = weight.detach().float().reshape(weight.size(0), -1)
    # The observer's rule (PerChannelMinMaxObserver, symmetric over [-128, 127]): the range
    # widened to hold 0, its larger side over 127.5, at least float32's eps. Computed here
    # because the observer's fused aminmax is slower (BENCHMARKS.md, section int8), and every
    # --int8 run waits for its weights before its first batch. The peak magnitude is that
    # larger side: it is never negative, so widening the range to 0 changes nothing.
    scales = (peak_magnitude(flat, 1) / 127.5).clamp_min(torch.finfo(torch.float32).eps)
    # w * (1 / scale), rounded half to even: fbgemm's own rule, so the integers equal
    # torch.quantize_per_channel's (which takes 4x longer); in place after the first pass
    integers = torch.mul(flat, (1.0 / scales)[:, None]).round_().clamp_(-128, 127).to(torch.int8)
    return integers.view(weight.shape), scales


def dynamic_quantize(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, float, int]:
    """Quantize ``x`` with its own range (widened to hold 0, so padding and zeros stay exact)
    in ``levels`` steps: ``(uint8 integers, scale, zero point)``, ``x ~ (q - zero_point) * scale``.

    Example:
        >>> q, scale, zero_point = dynamic_quantize(torch.tensor([-1.0, 0.0, 3.0]), 255)
        >>> q.tolist(), zero_point
        ([0, 64, 255], 64)
    """
    lo, hi = (v.item() for v in torch.aminmax(x))
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / levels or 1.0
    zero_point = round(-lo / scale)
    return quantize_activations(x, scale, zero_point), scale, zero_point


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (one scale per output channel) and int8 activations
    quantized per call with that call's range; float32 in and out.

    Args:
        weight: the float (out_features, in_features) weight.
        bias: the float (out_features,) bias, or None.
        onednn: run oneDNN's int8 matmul (default: where torch has it, see
            :func:`onednn_available`); otherwise fbgemm's ``quantized::linear_dynamic``.

    The weights are quantized as torch's ``per_channel_dynamic_qconfig`` would (the same
    integers) and packed once, straight from the tensors: going through
    ``torch.ao.nn.quantized.dynamic.Linear.from_float`` packed each weight three times and
    built a float ``nn.Linear`` first (measured in BENCHMARKS.md, section int8).

    Example:
        >>> lin = nn.Linear(16, 4)
        >>> x = torch.randn(3, 16)
        >>> bool((Int8Linear.from_linear(lin)(x) - lin(x)).norm() < 0.05 * lin(x).norm())
        True
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, onednn: bool | None = None):
        super().__init__()
        weight = weight.detach().float().contiguous()
        integers, self.scales = quantize_weight(weight)  # not kept: the packed copy is all that runs
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.out_features, self.in_features = weight.shape
        self.levels = activation_levels()
        self.onednn = onednn_available() if onednn is None else onednn
        self.zero_points = torch.zeros(self.out_features, dtype=torch.long)  # symmetric weights
        if self.onednn:
            self.packed = torch.ops.onednn.qlinear_prepack(integers, None)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # quantized tensors are deprecated in torch 2.10+ (kernels unchanged)
                qweight = torch._make_per_channel_quantized_tensor(integers, self.scales.double(),
                                                                   self.zero_points, 0)
                self.packed = torch.ops.quantized.linear_prepack(qweight, self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "Int8Linear":
        """The int8 twin of ``linear``."""
        return cls(linear.weight, linear.bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.onednn:
            return torch.ops.quantized.linear_dynamic(x.float(), self.packed, reduce_range=self.levels < 255)
        rows = x.float().reshape(-1, self.in_features)
        if rows.size(0) == 0:
            return x.new_zeros(*x.shape[:-1], self.out_features, dtype=torch.float32)
        out = self.matmul(*dynamic_quantize(rows, self.levels))
        return out.view(*x.shape[:-1], self.out_features)

    def matmul(self, rows: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
        """(M, in_features) uint8 activations ``(rows - zero_point) * scale`` times the weights,
        plus the bias: (M, out_features) float32. oneDNN only."""
        return torch.ops.onednn.qlinear_pointwise(rows, scale, zero_point, self.packed, self.scales, self.zero_points,
                                                  self.bias, 1.0, 0, torch.float32, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Conv1d(nn.Module):
    """A Conv1d (no padding, groups 1) as windows of frames times an int8 weight matrix.

    Input and output are (B, C, T) like ``nn.Conv1d``'s. The output is a transposed view of
    a channels-last (B, T', C') result, so the next Int8Conv1d reads it without a copy.

    Each window is divided by its largest magnitude before it is quantized, and its output
    multiplied back (exact in real arithmetic: the convolution is linear; the bias is added
    after). Dynamic quantization has one activation scale per call, and speech is loud and
    quiet in one recording: without this, quiet frames fall into a few int8 steps, and the
    per-frame layer norm after the feature encoder blows their error up (wav2vec 2.0 BASE on
    LJ Speech: 45-55 % relative error at every layer; with it, see BENCHMARKS.md).

    Example:
        >>> conv = nn.Conv1d(32, 16, 3, stride=2, bias=False)
        >>> x = torch.randn(2, 32, 50)
        >>> q = Int8Conv1d(conv)
        >>> y = q(x)
        >>> y.shape == conv(x).shape, bool((y - conv(x)).norm() < 0.05 * conv(x).norm())
        (True, True)
    """

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1,) or conv.padding not in ((0,), 0):
            raise ValueError("Int8Conv1d takes convolutions with groups 1, dilation 1 and no padding")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size[0], conv.stride[0]
        # (C', C, k) -> (C', k * C): the order of a channels-last window's values
        self.linear = Int8Linear(conv.weight.detach().float().permute(0, 2, 1).reshape(self.out_channels, -1))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().float().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C', (T - k) // stride + 1)."""
        b, k = x.size(0), self.kernel_size
        # (B, T, C): free when x is itself a transposed channels-last result (every Int8Conv1d
        # output); otherwise one transposing copy, twice as fast as gathering windows across strides
        frames = x.float().transpose(1, 2).contiguous()
        if frames.size(1) < k:
            return x.new_zeros(b, self.out_channels, 0)
        peak = peak_magnitude(frames, 2)  # (B, T): per frame
        scale = peak.unfold(1, k, self.stride).amax(-1).clamp_min(torch.finfo(torch.float32).tiny)  # per window
        windows = frames.unfold(1, k, self.stride).transpose(2, 3)  # (B, T', k, C), a view
        rows = torch.div(windows, scale[:, :, None, None]).view(b * scale.size(1), k * self.in_channels)
        if self.linear.onednn:  # rows lie in [-1, 1], known without a pass over them: onto [1, levels]
            half = self.linear.levels // 2
            out = self.linear.matmul(quantize_activations(rows, 1.0 / half, half + 1), 1.0 / half, half + 1)
        else:
            out = self.linear(rows)
        out = out.view(b, scale.size(1), self.out_channels)
        out = out * scale[:, :, None] if self.bias is None else torch.addcmul(self.bias, out, scale[:, :, None])
        return out.transpose(1, 2)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, int8"


class Int8PositionalConv(nn.Module):
    """wav2vec 2.0's positional convolution (:class:`~w2vtools.models.wav2vec2.WeightNormConv1d`:
    grouped, padded) as oneDNN's int8 convolution, activations quantized per call with that
    call's range, weights per output channel. Same input and output as the float module.

    Its input is the Transformer's input, whose range is even across time (unlike the feature
    encoder's, see :class:`Int8Conv1d`), so one scale per call serves.

    oneDNN's int8 grouped convolution returns wrong sums for some shapes on some CPUs. On an
    AMX Xeon with torch 2.14 it was off by several times the output's norm for 16 channels
    per group (the tiny preset's) and for one group of 768 with kernel 128; BASE's 48 per
    group is exact. So the packed kernel is checked once against integer sums
    (:meth:`_exact_here`), and where it is wrong the layer stays float32
    (``self.float_weight``) with a warning.

    Example:
        >>> from w2vtools.models.wav2vec2 import WeightNormConv1d
        >>> conv = WeightNormConv1d(32, 16, groups=4)
        >>> x = torch.randn(2, 32, 40)
        >>> bool((Int8PositionalConv(conv)(x) - conv(x)).norm() < 0.05 * conv(x).norm())
        True
    """

    def __init__(self, conv: WeightNormConv1d):
        super().__init__()
        with torch.no_grad():
            integers, self.scales = quantize_weight(conv.weight())
        self.groups, self.padding = conv.groups, conv.padding
        self.zero_points = torch.zeros(integers.size(0), dtype=torch.long)
        self.bias = conv.bias.detach().float().contiguous()
        self.levels = activation_levels()
        # the activation scale given here only seeds oneDNN's choice of kernel; each call passes its own
        self.packed = torch.ops.onednn.qconv_prepack(integers, self.scales, 1.0 / 127, 128, [1], [0], [1],
                                                     self.groups, None)
        self.float_weight = None
        if not self._exact_here(integers):
            log.warning("oneDNN's int8 grouped convolution is wrong on this CPU for %d channels in %d groups, "
                        "kernel %d; the positional convolution stays float32", integers.size(0), self.groups,
                        integers.size(2))
            self.float_weight = conv.weight().detach().float().contiguous()

    def _exact_here(self, integers: torch.Tensor) -> bool:
        """Whether the packed kernel gives the integer sums (up to float32 rounding: 1e-4 of the
        norm, against int8's 1e-2) on pseudo-random activations at two lengths; on the AMX Xeon
        a wrong shape was right at one output frame and wrong from about 20 on. The sums are
        checked for the first and the last group (wrong kernels were wrong everywhere), which
        keeps the check to about 10 ms for BASE."""
        gen = torch.Generator().manual_seed(0)
        channels, kernel = integers.size(0), integers.size(2)
        per_group = channels // self.groups
        zero_point = self.levels // 2
        weight = integers.float() * self.scales[:, None, None]
        for batch, frames in ((1, 37), (2, 150)):
            q = torch.randint(0, self.levels + 1, (batch, channels, frames + kernel - 1), dtype=torch.uint8,
                              generator=gen)
            out = self._qconv(q, 1.0, zero_point)
            for group in {0, self.groups - 1}:
                rows = slice(group * per_group, (group + 1) * per_group)  # its output and input channels
                exact = F.conv1d(q[:, rows].float() - zero_point, weight[rows], self.bias[rows])
                if not (out[:, rows] - exact).norm() <= 1e-4 * exact.norm():
                    return False
        return True

    def _qconv(self, q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
        """oneDNN's int8 convolution of already padded activations ``(q - zero_point) * scale``."""
        return torch.ops.onednn.qconv1d_pointwise(q, scale, zero_point, self.packed, self.scales, self.zero_points,
                                                  self.bias, [1], [0], [1], self.groups, 1.0, 0,
                                                  torch.float32, "none", [], "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T + 1 - kernel % 2), a transposed view of channels-last memory
        (contiguous where the layer stays float32)."""
        if self.float_weight is not None:
            return F.conv1d(x.float(), self.float_weight, self.bias, padding=self.padding, groups=self.groups)
        q, scale, zero_point = dynamic_quantize(x.float(), self.levels)
        # Padded here (with the zero point: exactly 0.0) rather than by oneDNN: asked to pad 64 frames
        # itself, oneDNN falls back to a slower kernel and builds it anew for every input length,
        # which on an AMX Xeon cost 0.25 s per new length (BENCHMARKS.md, section int8).
        return self._qconv(F.pad(q, (self.padding, self.padding), value=zero_point), scale, zero_point)


def _fuse_attention(attn: MultiheadAttention) -> None:
    """Replace q/k/v_proj by one int8 (3C, C) ``qkv_proj``."""
    weight, bias = attn._qkv_weights()
    del attn.q_proj, attn.k_proj, attn.v_proj
    attn._cache = None  # the float copy of the fused weights
    attn.qkv_proj = Int8Linear(weight, bias)


def _convertible_conv(module: nn.Module) -> bool:
    return (type(module) is nn.Conv1d and module.groups == 1 and module.dilation == (1,)
            and module.padding in ((0,), 0) and module.in_channels * module.kernel_size[0] >= MIN_CONV_DEPTH)


def quantize_int8(model: nn.Module, *, convs: bool = True) -> dict[str, int]:
    """Quantize ``model`` (in place, eval mode, on the CPU) for int8 inference.

    Args:
        model: any of our models (an encoder, a CTC model, a downstream model).
        convs: also turn dense convolutions into :class:`Int8Conv1d` (see the module doc).

    Returns:
        How many layers became int8: ``{"linear": n, "conv": m}``.

    Raises:
        ValueError: the model has parameters off the CPU.

    Example:
        >>> m = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        >>> quantize_int8(m)
        {'linear': 1, 'conv': 0}
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 quantization runs on a CPU only; move the model to the CPU first")
    model.eval()
    counts = {"linear": 0, "conv": 0}
    keep = {id(m) for kept in model.modules() if isinstance(kept, KEEP_FLOAT) for m in kept.modules()}
    for module in list(model.modules()):
        if isinstance(module, MultiheadAttention) and getattr(module, "qkv_proj", None) is None and id(module) not in keep:
            _fuse_attention(module)
            counts["linear"] += 1
    for parent in list(model.modules()):
        if id(parent) in keep:
            continue
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8Linear.from_linear(child))
                counts["linear"] += 1
            elif convs and _convertible_conv(child):
                setattr(parent, name, Int8Conv1d(child))
                counts["conv"] += 1
            elif convs and type(child) is WeightNormConv1d and onednn_available():
                setattr(parent, name, Int8PositionalConv(child))
                counts["conv"] += 1
    return counts
