"""Waveform augmentation of training audio: speed perturbation and additive noise.

Speed perturbation is Kaldi's and ESPnet's (``sox speed``: tempo and pitch change
together, the audio is resampled as if it had been recorded at ``rate * factor``); a
factor above 1 shortens the audio. Additive noise is white Gaussian noise at a
signal-to-noise ratio drawn per utterance: no noise corpus is needed, so it works
on any machine and in the tests. Each utterance draws its own factor and SNR from
the generator it is given, so a batch's augmentation depends only on its seed and a
resumed run reads what the uninterrupted one read.

Example:
    >>> aug = Augmentation(speeds=(0.9, 1.0, 1.1), snr_db=(10.0, 30.0), noise_prob=0.5)
    >>> out = aug(wav, np.random.default_rng(0), sample_rate=16000)   # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from w2vtools.audio import resample


@dataclass(frozen=True)
class Augmentation:
    """What happens to each training utterance before it is cropped or padded.

    Attributes:
        speeds: speed factors, one drawn uniformly per utterance (``()``: no change).
        snr_db: ``(low, high)``: white noise at an SNR drawn uniformly in this range, in dB
            against the utterance's own power (``None``: no noise).
        noise_prob: the probability that an utterance gets noise (with ``snr_db``).
    """

    speeds: tuple[float, ...] = ()
    snr_db: tuple[float, float] | None = None
    noise_prob: float = 1.0

    def __post_init__(self) -> None:
        if any(not (0.5 <= s <= 2.0) for s in self.speeds):
            raise ValueError(f"speed factors must be in [0.5, 2], got {list(self.speeds)}")
        if self.snr_db is not None and (len(self.snr_db) != 2 or self.snr_db[0] > self.snr_db[1]):
            raise ValueError(f"snr_db must be [low, high] with low <= high, got {list(self.snr_db)}")
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {self.noise_prob}")

    @property
    def active(self) -> bool:
        return any(s != 1.0 for s in self.speeds) or (self.snr_db is not None and self.noise_prob > 0)

    @property
    def max_stretch(self) -> float:
        """How much longer an utterance can come out (1 / the slowest factor)."""
        return 1.0 / min(self.speeds) if self.speeds else 1.0

    def __call__(self, wav: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
        """``wav`` (float32, mono) perturbed; the input is not modified.

        The generator is advanced by the same number of draws whatever is chosen, so one
        utterance's choice never shifts the next one's.
        """
        speed = float(self.speeds[rng.integers(len(self.speeds))]) if self.speeds else 1.0
        noisy = rng.random() < self.noise_prob
        snr = rng.uniform(*self.snr_db) if self.snr_db is not None else math.inf
        noise_seed = int(rng.integers(2**63))
        if speed != 1.0:
            # As if recorded at rate * speed and played at rate. That rate is rounded to 100 Hz so
            # that the pair reduces to a short kernel (16 kHz x 0.9: 14400/16000 = 9/10).
            wav = resample(wav, round(sample_rate * speed / 100) * 100 or sample_rate, sample_rate)
        if noisy and math.isfinite(snr) and len(wav):
            power = float(np.mean(wav.astype(np.float64) ** 2))
            if power > 0:
                sigma = math.sqrt(power / 10 ** (snr / 10))
                noise = np.random.default_rng(noise_seed).standard_normal(len(wav)) * sigma
                wav = (wav + noise).astype(np.float32)
        return wav

    @classmethod
    def from_lists(cls, speeds: list, snr_db: list, noise_prob: float) -> Augmentation | None:
        """From config lists (``data.speed_perturb``, ``data.noise_snr_db``); ``None`` when nothing is on.

        Example:
            >>> Augmentation.from_lists([0.9, 1.0, 1.1], [], 1.0).max_stretch
            1.1111111111111112
            >>> Augmentation.from_lists([], [], 1.0) is None
            True
        """
        aug = cls(speeds=tuple(float(s) for s in speeds),
                  snr_db=tuple(float(v) for v in snr_db) if snr_db else None,  # type: ignore[arg-type]
                  noise_prob=float(noise_prob))
        return aug if aug.active else None
