"""wav2vec (Schneider et al., 2019) and vq-wav2vec (Baevski et al., 2019).

Both share one model, :class:`Wav2VecModel`, as in fairseq:

* ``feature_extractor``: the *encoder* f: X -> Z, strided 1-D convolutions (no bias),
  each followed by a one-group group norm over channels and time and a ReLU/GELU;
  kernels (10, 8, 4, 4, 4), strides (5, 4, 2, 2, 2) give 10 ms frames with a 30 ms
  receptive field; optionally log compression ``log(|z| + 1)``. The "large"
  variant adds three 1x1 layers.
* ``vector_quantizer`` (vq-wav2vec only): Gumbel-softmax (G groups of V entries,
  straight-through, annealed temperature) or online k-means (commitment loss) between
  encoder and aggregator, from :mod:`w2vtools.models.quantizers`.
* ``feature_aggregator``: the *context network* g: Z -> C, causal convolutions
  (left replication padding) with group norm; the paper's base model has 9 layers of
  kernel 3 (210 ms receptive field), the large one 12 layers of kernels 2..13 with
  skip connections scaled by sqrt(0.5).
* ``wav2vec_predictions``: the step-specific affine maps h_k (one ConvTranspose2d
  producing all K steps) and the binary contrastive loss
  ``L = sum_k -[log sigmoid(z_{i+k} . h_k(c_i)) + sum_{negatives} log sigmoid(-z~ . h_k(c_i))]``
  with negatives drawn uniformly from the same utterance.

Module and parameter names are fairseq's, so a fairseq state dict loads unchanged.
Unlike fairseq, padded batches are handled exactly: group-norm statistics and
negative sampling only use an utterance's own frames, so an utterance gives the same
features alone or padded in a batch.

Example:
    >>> from w2vtools.models.presets import get_preset
    >>> model = Wav2VecModel(get_preset("wav2vec-tiny")).eval()
    >>> out = model.extract_features(torch.randn(2, 16000))
    >>> out.features.shape
    torch.Size([2, 98, 64])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from w2vtools.errors import W2VError
from w2vtools.models import FeatureOutput
from w2vtools.models.layers import Fp32GroupNorm, receptive_field
from w2vtools.models.quantizers import GumbelVectorQuantizer, KmeansVectorQuantizer

ConvSpec = tuple[int, int, int]  # (channels, kernel, stride)

WAV2VEC_ENCODER: list[ConvSpec] = [(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2)]
LARGE_ENCODER: list[ConvSpec] = WAV2VEC_ENCODER + [(512, 1, 1)] * 3
LARGE_AGGREGATOR: list[ConvSpec] = [(512, k, 1) for k in range(2, 14)]


@dataclass
class Wav2VecConfig:
    """Architecture and objective of a wav2vec / vq-wav2vec model (fairseq's field names).

    Attributes:
        conv_feature_layers: encoder convolutions as (channels, kernel, stride).
        conv_aggregator_layers: context-network convolutions as (channels, kernel, stride).
        prediction_steps: K, the number of future steps predicted (one affine map each).
        num_negatives: distractors per target, drawn uniformly from the same utterance.
        cross_sample_negatives: extra distractors drawn from any utterance of the batch.
        sample_distance: if set, negatives come from the first ``sample_distance`` frames
            (fairseq's semantics).
        dropout: dropout inside the aggregator and on the step projections.
        dropout_features: dropout on the encoder output before the aggregator.
        dropout_agg: dropout on the aggregator output.
        aggregator: only ``"cnn"`` (fairseq's ``gru`` aggregator was never published).
        no_conv_bias: aggregator convolutions without bias.
        agg_zero_pad: left-pad the aggregator with zeros instead of replicating frame 0.
        skip_connections_feat: residual connections in the encoder.
        skip_connections_agg: residual connections in the aggregator.
        residual_scale: residual sums are scaled by sqrt(residual_scale).
        log_compression: apply log(|z| + 1) to the encoder output.
        balanced_classes: weight negatives by 1/num_negatives in the loss.
        project_features: "none", "same" (targets pass through the aggregator) or "new".
        non_affine_group_norm: group norms without learned scale/shift.
        offset: first predicted step relative to the context frame; "auto" = the
            encoder's receptive field in frames, rounded up (fairseq).
        activation: "relu" or "gelu".
        vq_type: "none" (wav2vec), "gumbel" or "kmeans" (vq-wav2vec).
        vq_vars: V, codebook entries per group.
        vq_groups: G, number of groups.
        vq_dim: quantized vector size (0 = encoder channels).
        vq_depth: layers of the Gumbel logit projection.
        combine_groups: the groups share one codebook.
        vq_temp: Gumbel temperature (start, end, decay per update).
        vq_gamma: k-means commitment loss weight.
        infonce: cross-entropy over (positive, negatives) instead of binary cross-entropy.
        loss_weights: weights of the quantizer's extra loss (fairseq's criterion
            ``--loss-weights``); k-means vq-wav2vec uses [1], wav2vec and Gumbel vq-wav2vec none.
        sample_rate: input sample rate in Hz.
    """

    conv_feature_layers: list[ConvSpec] = field(default_factory=lambda: list(LARGE_ENCODER))
    conv_aggregator_layers: list[ConvSpec] = field(default_factory=lambda: list(LARGE_AGGREGATOR))
    prediction_steps: int = 12
    num_negatives: int = 10
    cross_sample_negatives: int = 0
    sample_distance: int | None = None
    dropout: float = 0.0
    dropout_features: float = 0.0
    dropout_agg: float = 0.0
    aggregator: str = "cnn"
    no_conv_bias: bool = False
    agg_zero_pad: bool = False
    skip_connections_feat: bool = False
    skip_connections_agg: bool = True
    residual_scale: float = 0.5
    log_compression: bool = True
    balanced_classes: bool = False
    project_features: str = "none"
    non_affine_group_norm: bool = False
    offset: str | int = "auto"
    activation: str = "relu"
    vq_type: str = "none"
    vq_vars: int = 320
    vq_groups: int = 2
    vq_dim: int = 0
    vq_depth: int = 1
    combine_groups: bool = False
    vq_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)
    vq_gamma: float = 0.25
    infonce: bool = False
    loss_weights: list[float] | None = None
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        self.conv_feature_layers = [tuple(int(v) for v in layer) for layer in self.conv_feature_layers]
        self.conv_aggregator_layers = [tuple(int(v) for v in layer) for layer in self.conv_aggregator_layers]
        self.vq_temp = tuple(float(v) for v in self.vq_temp)
        if self.vq_type is None:
            self.vq_type = "none"
        if self.aggregator != "cnn":
            raise W2VError(f"wav2vec aggregator {self.aggregator!r} is not supported (only 'cnn')")
        if self.activation not in ("relu", "gelu"):
            raise W2VError(f"unknown wav2vec activation {self.activation!r} (relu or gelu)")
        if self.vq_type not in ("none", "gumbel", "kmeans"):
            raise W2VError(f"unknown vq_type {self.vq_type!r} (none, gumbel or kmeans)")
        if self.project_features not in ("none", "same", "new"):
            raise W2VError(f"unknown project_features {self.project_features!r} (none, same or new)")

    @property
    def family(self) -> str:
        """``"vq-wav2vec"`` when a quantizer sits between encoder and aggregator, else ``"wav2vec"``."""
        return "wav2vec" if self.vq_type == "none" else "vq-wav2vec"

    def to_dict(self) -> dict:
        """Plain-Python form (lists, not tuples) for checkpoints.

        Example:
            >>> from w2vtools.models.presets import get_preset
            >>> Wav2VecConfig.from_dict(get_preset("wav2vec-large").to_dict()) == get_preset("wav2vec-large")
            True
        """
        d = asdict(self)
        d["conv_feature_layers"] = [list(x) for x in self.conv_feature_layers]
        d["conv_aggregator_layers"] = [list(x) for x in self.conv_aggregator_layers]
        d["vq_temp"] = list(self.vq_temp)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Wav2VecConfig":
        """Build from a dict, ignoring unknown keys (e.g. ``{"_name": "wav2vec"}``).

        Example:
            >>> Wav2VecConfig.from_dict({"vq_type": "kmeans", "foo": 1}).family
            'vq-wav2vec'
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------
# building blocks


def _conv_lengths(lengths: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    return torch.div(lengths - kernel, stride, rounding_mode="floor").add(1).clamp(min=0)


def _pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


class _MaskedSequential(nn.Sequential):
    """nn.Sequential (keeps fairseq's numeric submodule names) that hands a padding mask to norms."""

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        for module in self:
            if isinstance(module, Fp32GroupNorm):
                x = module(x, padding_mask)
            else:
                x = module(x)
        return x


def _activation(name: str) -> nn.Module:
    return nn.ReLU() if name == "relu" else nn.GELU()


class ConvFeatureExtractionModel(nn.Module):
    """The wav2vec encoder: raw waveform (B, S) -> latent features (B, C, T)."""

    def __init__(
        self,
        conv_layers: list[ConvSpec],
        dropout: float,
        log_compression: bool,
        skip_connections: bool,
        residual_scale: float,
        non_affine_group_norm: bool,
        activation: str,
    ):
        super().__init__()
        self.conv_layers = nn.ModuleList()
        in_d = 1
        for dim, k, stride in conv_layers:
            self.conv_layers.append(
                _MaskedSequential(
                    nn.Conv1d(in_d, dim, k, stride=stride, bias=False),
                    nn.Dropout(p=dropout),
                    Fp32GroupNorm(1, dim, affine=not non_affine_group_norm),
                    _activation(activation),
                )
            )
            in_d = dim
        self.specs = list(conv_layers)
        self.log_compression = log_compression
        self.skip_connections = skip_connections
        self.residual_scale = math.sqrt(residual_scale)

    def forward(
        self, source: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode; ``lengths`` (B,) valid samples per row. Returns (features, valid frames per row)."""
        x = source.unsqueeze(1)
        for conv, (_, k, stride) in zip(self.conv_layers, self.specs):
            residual = x
            mask = None
            if lengths is not None:
                lengths = _conv_lengths(lengths, k, stride)
                mask = _pad_mask(lengths, (x.size(-1) - k) // stride + 1)
            x = conv(x, mask)
            if self.skip_connections and x.size(1) == residual.size(1):
                # fairseq subsamples the residual by the ratio of (padded) lengths
                tsz, r_tsz = x.size(2), residual.size(2)
                residual = residual[..., :: r_tsz // tsz][..., :tsz]
                x = (x + residual) * self.residual_scale
        if self.log_compression:
            x = (x.abs() + 1).log()
        return x, lengths


class ZeroPad1d(nn.Module):
    """Left/right zero padding along time (fairseq's aggregator option ``agg_zero_pad``)."""

    def __init__(self, pad_left: int, pad_right: int):
        super().__init__()
        self.pad_left = pad_left
        self.pad_right = pad_right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (self.pad_left, self.pad_right))


class ConvAggegator(nn.Module):
    """The wav2vec context network (fairseq's class name, typo included): causal convolutions.

    Each block left-pads by ``kernel - 1`` frames, so frame t of the output sees only
    frames <= t; residuals (``skip_connections``) are scaled by sqrt(residual_scale).
    """

    def __init__(
        self,
        conv_layers: list[ConvSpec],
        embed: int,
        dropout: float,
        skip_connections: bool,
        residual_scale: float,
        non_affine_group_norm: bool,
        conv_bias: bool,
        zero_pad: bool,
        activation: str,
    ):
        super().__init__()
        self.conv_layers = nn.Sequential()
        self.residual_proj = nn.ModuleList()
        in_d = embed
        for i, (dim, k, stride) in enumerate(conv_layers):
            if stride != 1:
                raise W2VError(f"wav2vec aggregator layer {i} has stride {stride}; only stride 1 is supported")
            ka = k // 2
            kb = ka - 1 if k % 2 == 0 else ka
            pad = ZeroPad1d(ka + kb, 0) if zero_pad else nn.ReplicationPad1d((ka + kb, 0))
            if in_d != dim and skip_connections:
                self.residual_proj.append(nn.Conv1d(in_d, dim, 1, bias=False))
            else:
                self.residual_proj.append(None)
            self.conv_layers.append(
                _MaskedSequential(
                    pad,
                    nn.Conv1d(in_d, dim, k, stride=stride, bias=conv_bias),
                    nn.Dropout(p=dropout),
                    Fp32GroupNorm(1, dim, affine=not non_affine_group_norm),
                    _activation(activation),
                )
            )
            in_d = dim
        self.skip_connections = skip_connections
        self.residual_scale = math.sqrt(residual_scale)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        for rproj, conv in zip(self.residual_proj, self.conv_layers):
            residual = x
            x = conv(x, padding_mask)
            if self.skip_connections:
                if rproj is not None:
                    residual = rproj(residual)
                x = (x + residual) * self.residual_scale
        return x


class Wav2VecPredictionsModel(nn.Module):
    """Step-specific affine maps h_k and the contrastive logits (fairseq's semantics).

    ``project_to_steps`` (a ConvTranspose2d with kernel (1, K)) maps every context
    vector c_i to K predictions h_k(c_i), k = 1..K; prediction k is scored against the
    encoder frame ``i + offset + k - 1`` (the positive) and ``num_negatives`` frames
    drawn uniformly from the same utterance, excluding the positive's own position.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        prediction_steps: int,
        n_negatives: int,
        cross_sample_negatives: int,
        sample_distance: int | None,
        dropout: float,
        offset: int,
    ):
        super().__init__()
        self.n_negatives = n_negatives
        self.cross_sample_negatives = cross_sample_negatives
        self.sample_distance = sample_distance
        self.project_to_steps = nn.ConvTranspose2d(in_dim, out_dim, (1, prediction_steps))
        self.dropout = nn.Dropout(p=dropout)
        self.offset = offset

    def sample_negatives(self, y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Draw distractors: (B, C, T) targets -> (N, B, C, T), all on y's device.

        For row b, frame t: ``n_negatives`` indices uniform over the row's valid frames
        other than t, then ``cross_sample_negatives`` uniform over every valid frame of
        the batch other than (b, t).
        """
        bsz, fsz, tsz = y.shape
        device = y.device
        flat = y.transpose(1, 2).reshape(bsz * tsz, fsz)  # row-major (b, t)
        t_idx = torch.arange(tsz, device=device)
        picks = []
        if self.n_negatives > 0:
            high = lengths if self.sample_distance is None else lengths.clamp(max=self.sample_distance)
            high = high.clamp(min=2)  # an utterance of one frame has no other frame to draw
            u = torch.rand(bsz, tsz, self.n_negatives, device=device)
            idx = (u * (high - 1)[:, None, None].to(u.dtype)).long()
            idx = torch.minimum(idx, (high - 2)[:, None, None])
            idx = idx + (idx >= t_idx[None, :, None]).long()
            idx = idx.clamp(max=tsz - 1)  # rows of one frame: nothing else to draw, and no target uses it
            picks.append(idx + (torch.arange(bsz, device=device) * tsz)[:, None, None])
        if self.cross_sample_negatives > 0:
            # positions of valid frames in the flattened batch
            valid_flat = (~_pad_mask(lengths, tsz)).reshape(-1).nonzero().squeeze(1)
            total = valid_flat.numel()
            own = torch.cumsum((~_pad_mask(lengths, tsz)).reshape(-1).long(), 0) - 1  # rank of (b, t)
            own = own.view(bsz, tsz)
            u = torch.rand(bsz, tsz, self.cross_sample_negatives, device=device)
            r = torch.minimum((u * max(total - 1, 1)).long(), torch.tensor(max(total - 2, 0), device=device))
            r = r + (r >= own[:, :, None]).long()
            picks.append(valid_flat[r.clamp(max=total - 1)])
        idx = torch.cat(picks, dim=2)  # (B, T, N)
        negs = flat[idx.reshape(-1)].view(bsz, tsz, -1, fsz)
        return negs.permute(2, 0, 3, 1)  # (N, B, C, T)

    def forward(self, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Context (B, C, T) and targets (B, D, T) -> logits (M, 1 + N), column 0 the positive.

        M counts every (step, utterance, frame) whose target frame is a real frame.
        """
        x = self.dropout(self.project_to_steps(x.unsqueeze(-1)))  # (B, D, T, K)
        bsz, _, tsz, steps = x.shape
        steps = min(steps, tsz - self.offset)
        copies = 1 + self.n_negatives + self.cross_sample_negatives
        if steps <= 0:  # too short to predict anything; stay on the graph so backward() works
            return x.reshape(-1)[:0].view(0, 1).expand(0, copies)
        negatives = self.sample_negatives(y, lengths)
        targets = torch.cat([y.unsqueeze(0), negatives], dim=0)  # (copies, B, D, T)
        frame_pad = _pad_mask(lengths, tsz)
        logits = []
        for i in range(steps):
            offset = i + self.offset
            # score prediction i at frame t against every copy's frame t + offset
            scores = torch.einsum("bct,nbct->btn", x[..., :-offset, i], targets[..., offset:])
            keep = ~frame_pad[:, offset:]  # the target frame is real (hence the context frame too)
            logits.append(scores[keep])
        return torch.cat(logits, dim=0)


# ---------------------------------------------------------------------------
# the model


def _receptive_offset(layers: list[ConvSpec]) -> int:
    jin = rin = 0
    for _, k, stride in layers:
        if rin == 0:
            rin = k
        rin = rin + (k - 1) * jin
        jin = stride if jin == 0 else jin * stride
    return math.ceil(rin / jin)


class Wav2VecModel(nn.Module):
    """wav2vec / vq-wav2vec: encoder, optional quantizer, context network, predictions.

    Eval-mode feature extraction goes through :meth:`extract_features` (outputs "c",
    "z", and for vq-wav2vec "q") and :meth:`quantize` (codes). Training calls
    ``model(source, padding_mask)`` and :meth:`pretraining_loss` on its output.

    Example:
        >>> from w2vtools.models.presets import get_preset
        >>> model = Wav2VecModel(get_preset("vq-wav2vec-gumbel-tiny")).train()
        >>> out = model(torch.randn(2, 8000))
        >>> loss, sample_size, stats = model.pretraining_loss(out)
        >>> loss.dim(), sample_size > 0
        (0, True)
    """

    def __init__(self, cfg: Wav2VecConfig):
        super().__init__()
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        embed = cfg.conv_feature_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractionModel(
            conv_layers=cfg.conv_feature_layers,
            dropout=0.0,
            log_compression=cfg.log_compression,
            skip_connections=cfg.skip_connections_feat,
            residual_scale=cfg.residual_scale,
            non_affine_group_norm=cfg.non_affine_group_norm,
            activation=cfg.activation,
        )
        self.vector_quantizer = None
        vq_dim = cfg.vq_dim if cfg.vq_dim > 0 else embed
        if cfg.vq_type == "gumbel":
            self.vector_quantizer = GumbelVectorQuantizer(
                dim=embed,
                num_vars=cfg.vq_vars,
                temp=cfg.vq_temp,
                groups=cfg.vq_groups,
                combine_groups=cfg.combine_groups,
                vq_dim=vq_dim,
                time_first=False,
                weight_proj_depth=cfg.vq_depth,
                weight_proj_factor=2,
            )
            # fairseq uses the model's activation between the logit projection's layers
            for block in list(self.vector_quantizer.weight_proj)[:-1] if cfg.vq_depth > 1 else []:
                block[1] = _activation(cfg.activation)
        elif cfg.vq_type == "kmeans":
            self.vector_quantizer = KmeansVectorQuantizer(
                dim=embed,
                num_vars=cfg.vq_vars,
                groups=cfg.vq_groups,
                combine_groups=cfg.combine_groups,
                vq_dim=vq_dim,
                time_first=False,
                gamma=cfg.vq_gamma,
            )
        offset = _receptive_offset(cfg.conv_feature_layers) if cfg.offset == "auto" else int(cfg.offset)
        agg_in = vq_dim if self.vector_quantizer is not None else embed

        def make_aggregator() -> ConvAggegator:
            return ConvAggegator(
                conv_layers=cfg.conv_aggregator_layers,
                embed=agg_in,
                dropout=cfg.dropout,
                skip_connections=cfg.skip_connections_agg,
                residual_scale=cfg.residual_scale,
                non_affine_group_norm=cfg.non_affine_group_norm,
                conv_bias=not cfg.no_conv_bias,
                zero_pad=cfg.agg_zero_pad,
                activation=cfg.activation,
            )

        self.feature_aggregator = make_aggregator()
        agg_dim = cfg.conv_aggregator_layers[-1][0]
        self.wav2vec_predictions = Wav2VecPredictionsModel(
            in_dim=agg_dim,
            out_dim=embed,
            prediction_steps=cfg.prediction_steps,
            n_negatives=cfg.num_negatives,
            cross_sample_negatives=cfg.cross_sample_negatives,
            sample_distance=cfg.sample_distance,
            dropout=cfg.dropout,
            offset=offset,
        )
        self.dropout_feats = nn.Dropout(p=cfg.dropout_features)
        self.dropout_agg = nn.Dropout(p=cfg.dropout_agg)
        if cfg.project_features == "same":
            self.project_features = self.feature_aggregator
        elif cfg.project_features == "new":
            self.project_features = make_aggregator()
        else:
            self.project_features = None
        self.num_updates = 0

    # -- encoder interface ---------------------------------------------------

    @property
    def family(self) -> str:
        return self.cfg.family

    @property
    def frame_shift(self) -> float:
        """Seconds per output frame (0.01 for every published configuration)."""
        return math.prod(s for _, _, s in self.cfg.conv_feature_layers) / self.sample_rate

    @property
    def output_dim(self) -> int:
        return self.cfg.conv_aggregator_layers[-1][0]

    def num_frames(self, num_samples: int) -> int:
        """Number of output frames for ``num_samples`` input samples.

        Example:
            >>> from w2vtools.models.presets import get_preset
            >>> Wav2VecModel(get_preset("wav2vec-tiny")).num_frames(16000)
            98
        """
        n = int(num_samples)
        for _, k, stride in self.cfg.conv_feature_layers:
            n = max((n - k) // stride + 1, 0)
        return n

    def _lengths(self, source: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if padding_mask is None:
            return torch.full((source.size(0),), source.size(1), dtype=torch.long, device=source.device)
        return (~padding_mask).sum(dim=1).long()

    def _check_length(self, source: torch.Tensor) -> None:
        if self.num_frames(source.size(1)) < 1:
            rf = receptive_field(self.cfg.conv_feature_layers)
            raise W2VError(
                f"input of {source.size(1)} samples is shorter than the wav2vec encoder's receptive field "
                f"({rf} samples)"
            )

    def _quantize_frames(self, z: torch.Tensor, lengths: torch.Tensor, produce_targets: bool = False) -> dict:
        """Run the quantizer over the real frames only; padded frames of x are zero."""
        vq = self.vector_quantizer
        bsz, _, tsz = z.shape
        pad = _pad_mask(lengths, tsz)
        if not bool(pad.any()):
            return vq(z, produce_targets=produce_targets)
        if self.cfg.vq_type == "gumbel":
            # Gumbel is frame-wise: pack the real frames into one row so statistics
            # (perplexities) count real frames only, then scatter back.
            packed = z.transpose(1, 2)[~pad]  # (M, C)
            res = vq(packed.t().unsqueeze(0), produce_targets=produce_targets)
            x = z.new_zeros(bsz, tsz, res["x"].size(1))
            x[~pad] = res["x"].squeeze(0).t().to(x.dtype)
            res["x"] = x.transpose(1, 2)
            if produce_targets:
                t = res["targets"].new_full((bsz, tsz, res["targets"].size(-1)), -1)
                t[~pad] = res["targets"].squeeze(0)
                res["targets"] = t
            return res
        # k-means normalizes each utterance over time (group norm in its projection):
        # quantize every utterance on its own, then merge.
        parts = [vq(z[b : b + 1, :, : int(lengths[b])], produce_targets=produce_targets) for b in range(bsz)]
        x = z.new_zeros(bsz, parts[0]["x"].size(1), tsz)
        for b, p in enumerate(parts):
            x[b, :, : int(lengths[b])] = p["x"][0]
        n = lengths.to(torch.float32).clamp(min=1)
        res = {k: v for k, v in parts[0].items() if not torch.is_tensor(v)}
        res["x"] = x
        for key in ("kmeans_loss", "code_perplexity"):
            if key in parts[0]:
                res[key] = sum(p[key] * n[b] for b, p in enumerate(parts)) / n.sum()
        if produce_targets:
            g = parts[0]["targets"].size(-1)
            t = parts[0]["targets"].new_full((bsz, tsz, g), -1)
            for b, p in enumerate(parts):
                t[b, : int(lengths[b])] = p["targets"][0]
            res["targets"] = t
        return res

    def _encode(self, source: torch.Tensor, padding_mask: torch.Tensor | None):
        self._check_length(source)
        lengths = self._lengths(source, padding_mask)
        z, frame_lengths = self.feature_extractor(source, lengths if padding_mask is not None else None)
        if frame_lengths is None:
            frame_lengths = torch.full((z.size(0),), z.size(2), dtype=torch.long, device=z.device)
        return z, frame_lengths

    @torch.no_grad()
    def extract_features(
        self,
        source: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        *,
        output: str = "default",
        layer: int | str | None = None,
    ) -> FeatureOutput:
        """Frame-level features of raw 16 kHz audio (no gradient; call in eval mode).

        Args:
            source: (B, S) float waveform.
            padding_mask: (B, S) bool, True at padding.
            output: "c" (context network, the default), "z" (encoder output after log
                compression), or for vq-wav2vec "q" (quantized encoder output).
            layer: not used by wav2vec (it has one context output); must be None.

        Returns:
            FeatureOutput with features (B, T, D) (zeros at padded frames) and the
            frame padding mask (None without padding).

        Example:
            >>> from w2vtools.models.presets import get_preset
            >>> m = Wav2VecModel(get_preset("wav2vec-tiny")).eval()
            >>> m.extract_features(torch.randn(1, 4000), output="z").features.shape
            torch.Size([1, 23, 64])
        """
        if output == "default":
            output = "c"
        if output not in ("c", "z", "q"):
            raise W2VError(f"wav2vec models output 'c', 'z' or 'q', not {output!r}")
        if output == "q" and self.vector_quantizer is None:
            raise W2VError("output 'q' needs a vq-wav2vec model (this wav2vec model has no quantizer)")
        if layer not in (None, "last"):
            raise W2VError(f"wav2vec models have no layers to choose from (got layer={layer!r})")
        z, lengths = self._encode(source, padding_mask)
        frame_pad = _pad_mask(lengths, z.size(2)) if padding_mask is not None else None
        if output == "z":
            feats = z
        else:
            x = z
            if self.vector_quantizer is not None:
                x = self._quantize_frames(z, lengths)["x"]
            feats = x if output == "q" else self.feature_aggregator(x, frame_pad)
        feats = feats.transpose(1, 2)
        if frame_pad is not None:
            feats = feats.masked_fill(frame_pad[..., None], 0.0)
            if not bool(frame_pad.any()):
                frame_pad = None
        return FeatureOutput(features=feats, padding_mask=frame_pad)

    @torch.no_grad()
    def quantize(self, source: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """vq-wav2vec codes: (B, T, G) long, one codebook index per group; -1 at padded frames.

        Equals fairseq's ``model.vector_quantizer.forward_idx(z)`` (vq-wav2vec_featurize.py).

        Example:
            >>> from w2vtools.models.presets import get_preset
            >>> m = Wav2VecModel(get_preset("vq-wav2vec-kmeans-tiny")).eval()
            >>> m.quantize(torch.randn(1, 4000)).shape
            torch.Size([1, 23, 2])
        """
        if self.vector_quantizer is None:
            raise W2VError("this wav2vec model has no quantizer; codes need a vq-wav2vec model")
        z, lengths = self._encode(source, padding_mask)
        return self._quantize_frames(z, lengths, produce_targets=True)["targets"].long()

    # -- pretraining ---------------------------------------------------------

    def set_num_updates(self, num_updates: int) -> None:
        """Anneal the Gumbel temperature: max(start * decay**n, end)."""
        self.num_updates = num_updates
        if self.vector_quantizer is not None and hasattr(self.vector_quantizer, "set_num_updates"):
            self.vector_quantizer.set_num_updates(num_updates)

    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor | None = None) -> dict:
        """Training forward: contrastive logits plus the quantizer's outputs.

        Returns:
            dict with ``cpc_logits`` (M, 1 + N) (column 0 the positive), and for
            vq-wav2vec the quantizer's ``num_vars``, ``code_perplexity``, and either
            ``prob_perplexity`` and ``temp`` (Gumbel) or ``kmeans_loss`` (k-means).
        """
        result: dict = {}
        z, lengths = self._encode(source, padding_mask)
        frame_pad = _pad_mask(lengths, z.size(2))
        features = z
        if self.vector_quantizer is not None:
            q_res = self._quantize_frames(z, lengths)
            features = q_res.pop("x")
            result.update(q_res)
        x = self.dropout_feats(features)
        x = self.feature_aggregator(x, frame_pad)
        x = self.dropout_agg(x)
        if self.project_features is not None:
            features = self.project_features(features, frame_pad)
        result["cpc_logits"] = self.wav2vec_predictions(x, features, lengths)
        return result

    def pretraining_loss(self, net_output: dict) -> tuple[torch.Tensor, int, dict]:
        """The wav2vec criterion (fairseq ``--criterion wav2vec``), summed over targets.

        Binary cross-entropy of each positive (label 1) and negative (label 0) logit,
        summed over steps, frames and utterances; ``sample_size`` is the number of
        positives. With ``infonce`` it is cross-entropy over (positive, negatives) and
        ``sample_size`` the number of predictions. The quantizer's extra loss
        (k-means: latent + gamma * commitment; Gumbel: num_vars - prob_perplexity, as
        fairseq) is added times ``loss_weights[0]`` and ``sample_size`` when
        ``loss_weights`` is set (published: k-means [1], Gumbel none).

        Returns:
            (loss_sum, sample_size, stats) with stats as floats (``loss_bce``, ``accuracy``,
            perplexities, temperature, ``kmeans_loss``, ...).
        """
        logits = net_output["cpc_logits"].float()
        num_pred, copies = logits.shape
        if self.cfg.infonce:
            target = torch.zeros(num_pred, dtype=torch.long, device=logits.device)
            loss = F.cross_entropy(logits, target, reduction="sum")
            sample_size = num_pred
        else:
            labels = torch.zeros_like(logits)
            labels[:, 0] = 1.0
            weights = None
            if self.cfg.balanced_classes:
                weights = torch.full_like(logits, 1.0 / max(self.cfg.num_negatives, 1))
                weights[:, 0] = 1.0
            loss = F.binary_cross_entropy_with_logits(logits, labels, weights, reduction="sum")
            sample_size = num_pred
        stats: dict = {"loss_contrastive": float(loss.detach())}
        extra = None
        if "prob_perplexity" in net_output:
            extra = net_output["num_vars"] - net_output["prob_perplexity"]
        elif "kmeans_loss" in net_output:
            extra = net_output["kmeans_loss"]
        if self.cfg.loss_weights and extra is not None and self.cfg.loss_weights[0] != 0:
            extra_term = self.cfg.loss_weights[0] * extra.float() * sample_size
            loss = loss + extra_term
            stats["loss_quantizer"] = float(extra_term.detach())
        with torch.no_grad():
            if num_pred:
                # a prediction is right when its positive scores above every negative
                correct = (logits.argmax(dim=1) == 0) & ~(logits.argmin(dim=1) == 0)
                stats["correct"] = int(correct.sum())
                stats["count"] = num_pred
                stats["accuracy"] = float(correct.float().mean())
        for key in ("prob_perplexity", "code_perplexity", "temp", "kmeans_loss"):
            if key in net_output:
                v = net_output[key]
                stats[key] = float(v.detach()) if torch.is_tensor(v) else float(v)
        return loss, sample_size, stats
