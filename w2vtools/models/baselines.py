"""Filterbank and MFCC "models": the classic features behind the encoder interface.

They need no weights and compute what Kaldi's ``compute-fbank-feats`` /
``compute-mfcc-feats`` compute (torchaudio.compliance.kaldi), on 16 kHz audio with
a 25 ms window and 10 ms shift, ``snip_edges=true`` (Kaldi's default), samples
scaled to the 16-bit range as Kaldi reads them, and no dither (Kaldi dithers by
default; we do not, so the features are reproducible).

* ``fbank``: 80 log mel filterbank energies (ESPnet's and lhotse's choice).
* ``mfcc``: 13 cepstra from 23 mel bins (Kaldi's defaults).

Example:
    >>> enc = build_baseline("fbank")
    >>> enc.num_frames(16000), enc.frame_shift, enc.dim
    (98, 0.01, 80)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from w2vtools.models import FeatureOutput

BASELINES = ("fbank", "mfcc")


@dataclass
class BaselineConfig:
    kind: str = "fbank"  # fbank | mfcc
    sample_rate: int = 16000
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    num_mel_bins: int = 80
    num_ceps: int = 13
    dither: float = 0.0
    snip_edges: bool = True


class KaldiFeatures(nn.Module):
    """Kaldi-compatible fbank or MFCC with the encoder interface (``extract_features``)."""

    def __init__(self, config: BaselineConfig):
        super().__init__()
        self.config = config
        self.sample_rate = config.sample_rate
        self.frame_shift = config.frame_shift_ms / 1000.0
        self._window = int(config.sample_rate * config.frame_length_ms / 1000)
        self._hop = int(config.sample_rate * config.frame_shift_ms / 1000)
        self.dim = config.num_ceps if config.kind == "mfcc" else config.num_mel_bins

    @property
    def checksum(self) -> str:
        """A sha256 of the configuration (what identifies these "weights")."""
        return hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode()).hexdigest()

    def num_frames(self, num_samples: int) -> int:
        """Kaldi's frame count: ``1 + (n - window) // shift`` with snip_edges, 0 if shorter than a window."""
        if self.config.snip_edges:
            return 0 if num_samples < self._window else 1 + (num_samples - self._window) // self._hop
        return (num_samples + self._hop // 2) // self._hop

    def _one(self, wav: torch.Tensor) -> torch.Tensor:
        import torchaudio.compliance.kaldi as k

        c = self.config
        x = (wav * 32768.0)[None]
        common = dict(
            sample_frequency=float(c.sample_rate),
            frame_length=c.frame_length_ms,
            frame_shift=c.frame_shift_ms,
            dither=c.dither,
            snip_edges=c.snip_edges,
        )
        if c.kind == "mfcc":
            return k.mfcc(x, num_ceps=c.num_ceps, num_mel_bins=c.num_mel_bins, **common)
        return k.fbank(x, num_mel_bins=c.num_mel_bins, **common)

    @torch.no_grad()
    def extract_features(self, source, padding_mask=None, *, output="default", layer=None) -> FeatureOutput:
        """Per-utterance Kaldi features, padded to ``(B, T, D)``; each row computed on its own length."""
        if output not in ("default", "fbank", "mfcc", self.config.kind):
            raise ValueError(f"{self.config.kind} has no output {output!r}")
        lengths = (
            (~padding_mask).sum(1).tolist() if padding_mask is not None else [source.shape[1]] * source.shape[0]
        )
        feats = []
        for row, n in enumerate(lengths):
            if self.num_frames(n) == 0:
                feats.append(torch.zeros(0, self.dim))
            else:
                feats.append(self._one(source[row, :n].float()))
        longest = max(f.shape[0] for f in feats)
        out = torch.zeros(len(feats), longest, self.dim)
        mask = torch.zeros(len(feats), longest, dtype=torch.bool)
        for row, f in enumerate(feats):
            out[row, : f.shape[0]] = f
            mask[row, f.shape[0] :] = True
        return FeatureOutput(out, mask if mask.any() else None)

    def forward(self, source, padding_mask=None):
        return self.extract_features(source, padding_mask)


def build_baseline(name: str) -> KaldiFeatures:
    """``fbank`` (80 bins) or ``mfcc`` (13 cepstra)."""
    if name == "fbank":
        return KaldiFeatures(BaselineConfig(kind="fbank"))
    if name == "mfcc":
        return KaldiFeatures(BaselineConfig(kind="mfcc", num_mel_bins=23))
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
