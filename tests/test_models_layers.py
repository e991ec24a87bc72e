"""Building blocks shared by the model families (w2vtools.models.layers)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from w2vtools.models import layers
from w2vtools.models.layers import Fp32GroupNorm, _TimeMajorConv, conv1d_time_major, masked_group_norm


def test_fp32_group_norm_without_padding_is_torch_group_norm():
    """Without padding the masked group norm is exactly torch's GroupNorm."""
    norm = Fp32GroupNorm(1, 8)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 8, 20)
    ref = F.group_norm(x, 1, norm.weight, norm.bias)
    torch.testing.assert_close(norm(x), ref)
    torch.testing.assert_close(norm(x, torch.zeros(3, 20, dtype=torch.bool)), ref)
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[0, 12:] = True
    out = norm(x, mask)
    torch.testing.assert_close(out[0, :, :12], F.group_norm(x[:1, :, :12], 1, norm.weight, norm.bias)[0])


def test_masked_group_norm_of_a_padded_row_equals_the_row_alone():
    norm = torch.nn.GroupNorm(2, 4)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 4, 9)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, 5:] = True
    out = masked_group_norm(x, norm, mask)
    torch.testing.assert_close(out[1, :, :5], masked_group_norm(x[1:, :, :5], norm)[0])
    torch.testing.assert_close(out[0], F.group_norm(x[:1], 2, norm.weight, norm.bias)[0], atol=1e-6, rtol=1e-5)
    half = masked_group_norm(x.half(), norm, mask)
    assert half.dtype == torch.float16


def test_masked_group_norm_gradients_match_finite_differences():
    """Its hand-written backward, for per-channel and wider groups, with and without affine."""
    from w2vtools.models.layers import _MaskedGroupNorm

    torch.manual_seed(0)
    valid = torch.ones(3, 9, dtype=torch.float64)
    valid[1, 5:] = 0
    valid[2, 1:] = 0  # one valid frame: its variance is 0
    for groups, channels in ((4, 4), (2, 4), (1, 6)):
        x = torch.randn(3, channels, 9, dtype=torch.float64, requires_grad=True)
        w = torch.randn(channels, dtype=torch.float64, requires_grad=True)
        b = torch.randn(channels, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, w, b: _MaskedGroupNorm.apply(x, valid, w, b, groups, 1e-5), (x, w, b))
        assert torch.autograd.gradcheck(lambda x: _MaskedGroupNorm.apply(x, valid, None, None, groups, 1e-5), (x,))


def test_masked_group_norm_gives_the_bias_at_padded_frames_and_ignores_what_was_there():
    norm = torch.nn.GroupNorm(4, 4)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 4, 9)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, 5:] = True
    garbage = x.clone()
    garbage[1, :, 5:] = 1e4
    out = masked_group_norm(x, norm, mask)
    torch.testing.assert_close(out, masked_group_norm(garbage, norm, mask))
    torch.testing.assert_close(out[1, :, 5:], norm.bias.detach()[:, None].expand(4, 4))


@pytest.mark.parametrize(
    "kernel,stride,frames",
    # wav2vec 2.0's layers (10/5, 3/2, 2/2), vq-wav2vec's (8/4, 4/2), a kernel of three
    # stride blocks (3/1), a stride past the kernel (2/3); odd and even lengths
    [(10, 5, 63), (3, 2, 41), (3, 2, 40), (2, 2, 40), (2, 2, 41), (8, 4, 37), (4, 2, 30), (3, 1, 12), (2, 3, 17)],
)
@pytest.mark.parametrize("bias", [False, True])
def test_time_major_convolution_is_conv1d_forward_and_backward(kernel, stride, frames, bias):
    """The GEMM convolution on (B, S, C) frames gives conv1d's output and gradients, and its
    backward is the derivative of its forward (finite differences, float64)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(5, 7, kernel, stride=stride, bias=bias).double()
    x = torch.randn(3, frames, 5, dtype=torch.float64, requires_grad=True)
    ours = conv1d_time_major(x, conv)
    x_ref = x.detach().transpose(1, 2).requires_grad_()
    ref = conv(x_ref).transpose(1, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, [x, *conv.parameters()], grad)
    ref_grads = torch.autograd.grad(ref, [x_ref, *conv.parameters()], grad)
    torch.testing.assert_close(ours_grads[0], ref_grads[0].transpose(1, 2), rtol=1e-12, atol=1e-12)
    for a, b in zip(ours_grads[1:], ref_grads[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    small = torch.randn(1, kernel + 2 * stride, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True) if bias else None
    assert torch.autograd.gradcheck(lambda *t: _TimeMajorConv.apply(*t, stride), (small, w, b))


@pytest.mark.parametrize("channels_first", [True, False])
def test_time_major_convolution_returns_the_input_gradient_in_the_inputs_layout(channels_first):
    """Given channels-first memory seen time-major (the first block's output in training), the
    input gradient comes back in that memory layout, so the elementwise backward ops before it
    (GELU, the group norm) read gradient and saved tensors alike; values as for contiguous input."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 4, 3, stride=2).double()
    base = torch.randn(2, 6, 25, dtype=torch.float64) if channels_first else torch.randn(2, 25, 6, dtype=torch.float64)
    x = (base.transpose(1, 2) if channels_first else base).requires_grad_()
    grad = torch.randn(2, 12, 4, dtype=torch.float64)
    (dx,) = torch.autograd.grad(conv1d_time_major(x, conv), [x], grad)
    assert dx.stride() == x.stride()
    x_ref = x.detach().contiguous().requires_grad_()
    (ref,) = torch.autograd.grad(conv1d_time_major(x_ref, conv), [x_ref], grad)
    assert ref.is_contiguous()
    torch.testing.assert_close(dx, ref, rtol=0, atol=0)


@pytest.mark.parametrize("channels_first", [True, False])
def test_time_major_convolution_under_bf16_autocast_is_as_close_as_onednns(channels_first, monkeypatch):
    """Under CPU bf16 autocast the GEMM convolution runs in bf16, as autocast's convolution
    does: output bf16, its error against float64 within twice oneDNN's bf16 convolution's;
    the gradients in the parameters' and input's dtype (float32) and the input's layout, with
    the weight gradient summed over utterances in float32."""
    monkeypatch.setattr(layers, "cpu_has_native_bf16", lambda: True)
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(64, 48, 3, stride=2, bias=True)
    base = torch.randn(4, 64, 301) if channels_first else torch.randn(4, 301, 64)
    x = (base.transpose(1, 2) if channels_first else base).requires_grad_()
    grad = torch.randn(4, 150, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layers.time_major_conv_applies(conv, x)
        ours = conv1d_time_major(x, conv)
        x_dnn = x.detach().transpose(1, 2).requires_grad_()
        theirs = conv(x_dnn).transpose(1, 2)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    ours_grads = torch.autograd.grad(ours, [x, *conv.parameters()], grad.bfloat16())
    theirs_grads = torch.autograd.grad(theirs, [x_dnn, *conv.parameters()], grad.bfloat16())
    assert ours_grads[0].dtype == torch.float32 and ours_grads[0].stride() == x.stride()
    assert [g.dtype for g in ours_grads[1:]] == [torch.float32, torch.float32]

    conv64 = copy.deepcopy(conv).double()
    x64 = x.detach().double().transpose(1, 2).requires_grad_()
    exact = conv64(x64).transpose(1, 2)
    exact_grads = torch.autograd.grad(exact, [x64, *conv64.parameters()], grad.double())

    def error(got, want):
        return float((got.detach().double() - want.detach()).norm() / want.detach().norm())

    assert error(ours, exact) <= 2 * error(theirs, exact) + 1e-4
    assert error(ours_grads[0], exact_grads[0].transpose(1, 2)) <= 2 * error(theirs_grads[0], exact_grads[0]) + 1e-4
    for a, b, want in zip(ours_grads[1:], theirs_grads[1:], exact_grads[1:]):
        assert error(a, want) <= 2 * error(b, want) + 1e-4
    with torch.autocast("cpu", dtype=torch.float16):
        assert not layers.time_major_conv_applies(conv, x)
    monkeypatch.setattr(layers, "cpu_has_native_bf16", lambda: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layers.time_major_conv_applies(conv, x)


@pytest.mark.parametrize("into_time_major", [True, False])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
                                    (torch.float32, torch.float32)])
def test_copy_between_layouts_is_copy(into_time_major, dtypes):
    """The blocked copy between time-major and channels-first memory equals ``copy_`` for
    lengths and channel counts that are not multiples of its blocks, and keeps dst's layout."""
    torch.manual_seed(0)
    src_dtype, dst_dtype = dtypes
    b, t, c = 3, 2 * layers._FRAMES_PER_COPY + 37, 3 * layers._CHANNELS_PER_COPY + 5
    if into_time_major:
        src, dst = torch.randn(b, c, t).to(src_dtype).transpose(1, 2), torch.empty(b, t, c, dtype=dst_dtype)
    else:
        src, dst = torch.randn(b, t, c).to(src_dtype), torch.empty(b, c, t, dtype=dst_dtype).transpose(1, 2)
    strides = dst.stride()
    out = layers.copy_between_layouts(dst, src)
    assert out is dst and out.stride() == strides
    assert torch.equal(out, torch.empty_like(dst).copy_(src))
