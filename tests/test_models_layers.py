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
