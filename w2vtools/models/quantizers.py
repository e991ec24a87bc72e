"""Vector quantizers of the wav2vec family.

* :class:`GumbelVectorQuantizer`: product quantization with a Gumbel-softmax
  straight-through estimator (vq-wav2vec's Gumbel variant, wav2vec 2.0, XLS-R).
* :class:`KmeansVectorQuantizer`: online k-means (vq-wav2vec's k-means variant)
  with a straight-through estimator, a codebook loss and a commitment loss.

Parameter names follow fairseq (``vars``, ``weight_proj``; ``embedding``,
``projection``) so fairseq checkpoints load by name. Both quantizers return a
dict with ``x`` (the quantized vectors), ``num_vars``, ``code_perplexity``
(perplexity of the hard code choices in the batch, summed over groups) and,
when asked, ``targets`` (B, T, G) code indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from w2vtools.models.layers import Fp32GroupNorm


def _perplexity(probs: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of each group's distribution, summed over groups. probs: (G, V)."""
    return torch.exp(-torch.sum(probs * torch.log(probs + 1e-7), dim=-1)).sum()


class GumbelVectorQuantizer(nn.Module):
    """Product quantizer with G groups of V learned codewords each, picked by Gumbel softmax.

    A linear projection (``weight_proj``) gives G x V logits per frame. In training
    mode a codeword per group is drawn with a hard Gumbel softmax (straight-through
    gradients, temperature ``curr_temp``); in eval mode the arg-max is used. The
    chosen codewords of all groups are concatenated.

    Args:
        dim: input dimension.
        num_vars: V, codewords per group.
        temp: (start, end, decay): the temperature is ``max(start * decay**updates, end)``.
        groups: G.
        combine_groups: share one codebook among groups.
        vq_dim: output dimension (G x codeword dim).
        time_first: input is (B, T, C) when True, (B, C, T) otherwise.
        weight_proj_depth: hidden layers (Linear + GELU) before the logits projection.
        weight_proj_factor: width factor of those hidden layers.

    Example:
        >>> q = GumbelVectorQuantizer(512, 320, (2.0, 0.5, 0.999995), 2, False, 256, True)
        >>> out = q(torch.randn(1, 49, 512), produce_targets=True)
        >>> out["x"].shape, out["targets"].shape
        (torch.Size([1, 49, 256]), torch.Size([1, 49, 2]))
    """

    def __init__(
        self,
        dim: int,
        num_vars: int,
        temp: tuple[float, float, float],
        groups: int,
        combine_groups: bool,
        vq_dim: int,
        time_first: bool,
        weight_proj_depth: int = 1,
        weight_proj_factor: int = 1,
        hard: bool = True,
    ):
        super().__init__()
        if vq_dim % groups:
            raise ValueError(f"vq_dim {vq_dim} must be divisible by groups {groups}")
        self.groups = groups
        self.combine_groups = combine_groups
        self.input_dim = dim
        self.num_vars = num_vars
        self.time_first = time_first
        self.hard = hard
        var_dim = vq_dim // groups
        num_groups = 1 if combine_groups else groups
        self.vars = nn.Parameter(torch.empty(1, num_groups * num_vars, var_dim))
        nn.init.uniform_(self.vars)
        if weight_proj_depth > 1:
            inner = dim * weight_proj_factor
            blocks = []
            for i in range(weight_proj_depth - 1):
                blocks.append(nn.Sequential(nn.Linear(dim if i == 0 else inner, inner), nn.GELU()))
            self.weight_proj = nn.Sequential(*blocks, nn.Linear(inner, groups * num_vars))
        else:
            self.weight_proj = nn.Linear(dim, groups * num_vars)
            nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
            nn.init.zeros_(self.weight_proj.bias)
        self.max_temp, self.min_temp, self.temp_decay = (float(t) for t in temp)
        self.curr_temp = self.max_temp

    def set_num_updates(self, num_updates: int) -> None:
        """Anneal the Gumbel temperature: ``max(start * decay**num_updates, end)``."""
        self.curr_temp = max(self.max_temp * self.temp_decay**num_updates, self.min_temp)

    def codebook(self) -> torch.Tensor:
        """(G, V, var_dim) codewords."""
        vars_ = self.vars.view(-1, self.num_vars, self.vars.size(-1))
        return vars_.expand(self.groups, -1, -1) if self.combine_groups else vars_

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, G, V) code logits."""
        if not self.time_first:
            x = x.transpose(1, 2)
        b, t, _ = x.shape
        return self.weight_proj(x).view(b, t, self.groups, self.num_vars)

    def forward_idx(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantized vectors and (B, T, G) code indices."""
        res = self.forward(x, produce_targets=True)
        return res["x"], res["targets"]

    def forward(self, x: torch.Tensor, produce_targets: bool = False) -> dict:
        result: dict = {"num_vars": self.num_vars * self.groups}
        logits = self.logits(x)  # (B, T, G, V)
        b, t = logits.shape[:2]
        flat = logits.reshape(b * t, self.groups, self.num_vars)
        with torch.no_grad():
            k = flat.argmax(-1)  # (BT, G)
            hard_x = torch.zeros_like(flat).scatter_(-1, k.unsqueeze(-1), 1.0)
            result["code_perplexity"] = _perplexity(hard_x.float().mean(dim=0))
        avg_probs = torch.softmax(flat.float(), dim=-1).mean(dim=0)
        result["prob_perplexity"] = _perplexity(avg_probs)
        result["temp"] = self.curr_temp
        if self.training:
            onehot = F.gumbel_softmax(flat.float(), tau=self.curr_temp, hard=self.hard).type_as(flat)
        else:
            onehot = hard_x
        if produce_targets:
            result["targets"] = onehot.argmax(-1).view(b, t, self.groups).detach()
        # (BT, G, V) x (G, V, d) -> (BT, G, d): a batched matmul instead of fairseq's
        # broadcast multiply-and-sum, which materializes (BT, G*V, d).
        q = torch.einsum("ngv,gvd->ngd", onehot, self.codebook().to(onehot.dtype))
        q = q.reshape(b, t, -1)
        if not self.time_first:
            q = q.transpose(1, 2)
        result["x"] = q
        return result


class KmeansVectorQuantizer(nn.Module):
    """Online k-means product quantizer (vq-wav2vec, Baevski et al., 2019).

    Input frames are projected (grouped 1x1 convolution + group norm, ``projection``),
    split into G groups, and each group is replaced by its nearest codeword of
    ``embedding`` (V, G, d). Gradients pass straight through to the projection;
    ``kmeans_loss`` = codebook loss + gamma x commitment loss.

    Args:
        dim: input (and projection) dimension.
        num_vars: V, codewords per group.
        groups: G.
        combine_groups: share one codebook among groups.
        vq_dim: output dimension (G x d).
        time_first: input is (B, T, C) when True, (B, C, T) otherwise.
        gamma: commitment loss weight.

    Example:
        >>> q = KmeansVectorQuantizer(512, 320, 2, False, 512, time_first=False)
        >>> out = q(torch.randn(1, 512, 49), produce_targets=True)
        >>> out["x"].shape, out["targets"].shape
        (torch.Size([1, 512, 49]), torch.Size([1, 49, 2]))
    """

    def __init__(
        self,
        dim: int,
        num_vars: int,
        groups: int,
        combine_groups: bool,
        vq_dim: int,
        time_first: bool,
        gamma: float = 0.25,
    ):
        super().__init__()
        if vq_dim % groups:
            raise ValueError(f"vq_dim {vq_dim} must be divisible by groups {groups}")
        if vq_dim != dim:
            raise ValueError(f"k-means quantizer needs vq_dim == dim (got {vq_dim} and {dim})")
        self.groups = groups
        self.combine_groups = combine_groups
        self.input_dim = dim
        self.num_vars = num_vars
        self.vq_dim = vq_dim
        self.time_first = time_first
        self.var_dim = vq_dim // groups
        num_groups = 1 if combine_groups else groups
        # Codewords start on the scale of what they quantize: the projection ends in a
        # group norm, so each coordinate is ~N(0, 1). (fairseq starts them at 0.01 x that:
        # near the origin, the first codewords pulled out to the data win every frame
        # and the rest stay unused; the tiny preset's code perplexity fell to 2.0, its
        # floor, for 50 updates. From N(0, 1): lowest 3.2, and a lower loss at 300.)
        self.embedding = nn.Parameter(torch.randn(num_vars, num_groups, self.var_dim))
        self.projection = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size=1, groups=groups, bias=False),
            Fp32GroupNorm(groups, dim),
        )
        self.gamma = gamma

    @property
    def expand_embedding(self) -> torch.Tensor:
        """(V, G, d) codewords."""
        if self.combine_groups:
            return self.embedding.expand(self.num_vars, self.groups, self.var_dim)
        return self.embedding

    def set_num_updates(self, num_updates: int) -> None:
        """No schedule: present so every quantizer can be driven alike."""

    def forward_idx(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantized vectors and (B, T, G) code indices."""
        res = self.forward(x, produce_targets=True)
        return res["x"], res["targets"]

    def forward(self, x: torch.Tensor, produce_targets: bool = False) -> dict:
        result: dict = {"num_vars": self.num_vars}
        if self.time_first:
            x = x.transpose(1, 2)
        b, _, t = x.shape
        ze = self.projection(x)  # (B, C, T)
        ze_ = ze.view(b, self.groups, self.var_dim, t).permute(0, 3, 1, 2)  # (B, T, G, d)
        emb = self.expand_embedding  # (V, G, d)
        # Squared distances per group via |a|^2 - 2ab + |b|^2 (no (V, B, T, G, d) tensor).
        flat = ze_.reshape(b * t, self.groups, self.var_dim).transpose(0, 1)  # (G, BT, d)
        codes = emb.transpose(0, 1)  # (G, V, d)
        dist = (
            flat.pow(2).sum(-1, keepdim=True)
            - 2 * torch.bmm(flat, codes.transpose(1, 2))
            + codes.pow(2).sum(-1).unsqueeze(1)
        )  # (G, BT, V)
        idx = dist.argmin(-1).transpose(0, 1).reshape(b, t, self.groups)  # (B, T, G)
        zq = torch.stack([emb[idx[..., g], g] for g in range(self.groups)], dim=-2)  # (B, T, G, d)
        zq = zq.reshape(b, t, self.groups * self.var_dim).permute(0, 2, 1)  # (B, C, T)
        out = zq.detach() + (ze - ze.detach())  # straight-through
        with torch.no_grad():
            hard = F.one_hot(idx.reshape(-1, self.groups), self.num_vars).float()
            result["code_perplexity"] = _perplexity(hard.mean(dim=0))
        if produce_targets:
            result["targets"] = idx
        if self.time_first:
            out = out.transpose(1, 2)
        result["x"] = out
        ze_f, zq_f = ze.float(), zq.float()
        latent_loss = F.mse_loss(zq_f, ze_f.detach())
        commitment_loss = F.mse_loss(ze_f, zq_f.detach())
        result["kmeans_loss"] = latent_loss + self.gamma * commitment_loss
        return result


__all__ = ["GumbelVectorQuantizer", "KmeansVectorQuantizer"]
