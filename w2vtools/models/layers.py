"""Building blocks shared by the model families.

Example:
    >>> norm = Fp32GroupNorm(1, 4)
    >>> norm(torch.randn(2, 4, 7), torch.zeros(2, 7, dtype=torch.bool)).shape
    torch.Size([2, 4, 7])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``norm`` applied to (B, C, T) in float32, statistics over each row's valid frames only.

    Without ``padding_mask`` this is exactly ``F.group_norm`` computed in float32
    (fairseq's Fp32GroupNorm, safe under fp16 autocast). With ``padding_mask``
    (B, T, True = pad), padded frames are left out of each group's mean and
    variance, so a padded utterance is normalized exactly as it would be alone.

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
    bsz, channels, tsz = x.shape
    groups = norm.num_groups
    xf = x.float().view(bsz, groups, channels // groups, tsz)
    valid = (~padding_mask).to(xf.dtype).view(bsz, 1, 1, tsz)
    count = (valid.sum(dim=-1, keepdim=True) * (channels // groups)).clamp(min=1)
    mean = (xf * valid).sum(dim=(2, 3), keepdim=True) / count
    centered = xf - mean
    var = (centered.pow(2) * valid).sum(dim=(2, 3), keepdim=True) / count
    y = (centered * torch.rsqrt(var + norm.eps)).view(bsz, channels, tsz)
    if norm.affine:
        y = torch.addcmul(bias.view(1, channels, 1), y, weight.view(1, channels, 1))
    return y.type_as(x)


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
