"""Building blocks shared by the model families (w2vtools.models.layers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from w2vtools.models.layers import Fp32GroupNorm, masked_group_norm


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
