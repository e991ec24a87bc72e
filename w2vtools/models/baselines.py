"""Filterbank and MFCC "models": the classic features behind the encoder interface.

They need no weights and compute what Kaldi's ``compute-fbank-feats`` /
``compute-mfcc-feats`` compute (torchaudio.compliance.kaldi), on 16 kHz audio with
a 25 ms window and 10 ms shift, ``snip_edges=true`` (Kaldi's default), samples
scaled to the 16-bit range as Kaldi reads them, and no dither (Kaldi dithers by
default; we do not, so the features are reproducible).

* ``fbank``: 80 log mel filterbank energies (ESPnet's and lhotse's choice).
* ``mfcc``: 13 cepstra from 23 mel bins (Kaldi's defaults).

Options follow the name after a colon, ``fbank:sample_rate=8000,num_mel_bins=40``
(``w2v featurize --sample-rate/--num-mel-bins/--num-ceps`` write them so): the
audio is resampled to ``sample_rate`` (default 16000, the wav2vec models' rate; give
8000 for telephone or FSDD audio instead of upsampling it), and the spec is the
``model`` attribute of the output, so it says how the features were made.

Example:
    >>> enc = build_baseline("fbank")
    >>> enc.num_frames(16000), enc.frame_shift, enc.dim
    (98, 0.01, 80)
    >>> enc = build_baseline("fbank:sample_rate=8000,num_mel_bins=40")
    >>> enc.num_frames(8000), enc.dim, enc.feature_attrs["num_mel_bins"]
    (98, 40, 40)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from w2vtools.errors import W2VError
from w2vtools.models import FeatureOutput

BASELINES = ("fbank", "mfcc")
#: the options a spec may set (``fbank:sample_rate=8000``), with their types
OPTIONS = {"sample_rate": int, "num_mel_bins": int, "num_ceps": int}


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
    def feature_attrs(self) -> dict:
        """What the output's attributes record about these features (``num_mel_bins``, and ``num_ceps`` for MFCC)."""
        c = self.config
        attrs = {"num_mel_bins": c.num_mel_bins, "frame_length_ms": c.frame_length_ms}
        if c.kind == "mfcc":
            attrs["num_ceps"] = c.num_ceps
        return attrs

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


def is_baseline(spec: str) -> bool:
    """Whether ``spec`` names a baseline: ``fbank``, ``mfcc``, or either with options (``fbank:...``).

    Example:
        >>> is_baseline("mfcc:num_ceps=20"), is_baseline("wav2vec2-base")
        (True, False)
    """
    return str(spec).split(":", 1)[0] in BASELINES


def baseline_spec(name: str, **options: int | None) -> str:
    """``name`` with the options that are set, as :func:`build_baseline` reads it back.

    Example:
        >>> baseline_spec("fbank", sample_rate=8000, num_mel_bins=None)
        'fbank:sample_rate=8000'
        >>> baseline_spec("mfcc")
        'mfcc'
    """
    given = [f"{k}={v}" for k, v in options.items() if v is not None]
    return name + (":" + ",".join(given) if given else "")


def baseline_options(model: str, **options: int | None) -> str:
    """``model`` with the command line's baseline options added (``w2v featurize --sample-rate ...``).

    Raises:
        W2VError: options given for a model that is not fbank or MFCC.

    Example:
        >>> baseline_options("fbank", sample_rate=8000, num_mel_bins=40, num_ceps=None)
        'fbank:sample_rate=8000,num_mel_bins=40'
        >>> baseline_options("wav2vec2-base", sample_rate=None)
        'wav2vec2-base'
    """
    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return model
    if not is_baseline(model):
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise W2VError(f"{flags}: only for --model fbank or mfcc ({model} has its own rate and features)")
    name, earlier = _parse_options(model)
    return baseline_spec(name, **{**earlier, **given})


def _parse_options(spec: str) -> tuple[str, dict[str, int]]:
    name, _, rest = spec.partition(":")
    options: dict[str, int] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if key not in OPTIONS or not eq:
            raise W2VError(f"{spec}: unknown option {item!r}; options are {', '.join(OPTIONS)} (KEY=VALUE)")
        try:
            options[key] = OPTIONS[key](value)
        except ValueError:
            raise W2VError(f"{spec}: {key} must be a whole number, got {value!r}") from None
        if options[key] < 1:
            raise W2VError(f"{spec}: {key} must be positive, got {value}")
    return name, options


def build_baseline(spec: str) -> KaldiFeatures:
    """``fbank`` (80 bins) or ``mfcc`` (13 cepstra from 23 bins), at 16 kHz unless the spec says otherwise.

    Raises:
        W2VError: an unknown name or option, a bad value, MFCC with more cepstra
            than mel bins, or ``num_ceps`` for fbank.

    Example:
        >>> build_baseline("mfcc:sample_rate=8000,num_ceps=20").config.num_ceps
        20
    """
    name, options = _parse_options(str(spec))
    if name not in BASELINES:
        raise W2VError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    if name == "fbank" and "num_ceps" in options:
        raise W2VError(f"{spec}: num_ceps (--num-ceps) is an MFCC option; fbank has num_mel_bins")
    defaults = {"num_mel_bins": 23} if name == "mfcc" else {}
    config = BaselineConfig(kind=name, **{**defaults, **options})
    if name == "mfcc" and config.num_ceps > config.num_mel_bins:
        raise W2VError(f"{spec}: num_ceps {config.num_ceps} is more than num_mel_bins {config.num_mel_bins}")
    if config.sample_rate * config.frame_length_ms / 1000 < 2:
        raise W2VError(f"{spec}: sample_rate {config.sample_rate} leaves no samples in a window")
    return KaldiFeatures(config)
