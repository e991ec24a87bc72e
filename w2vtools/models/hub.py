"""Named pretrained models: fetched once from their official address into ``$W2V_HOME``.

``resolve("wav2vec2-base")`` returns the local path of fairseq's ``wav2vec_small.pt``,
downloading it the first time into ``$W2V_HOME/models/`` (default ``~/.cache/w2v``).
The download goes to a temporary file renamed into place when complete, so an
interrupted download never looks like a model. Without network the error says
which address to fetch and where to put the file.

``$W2V_HUB_MIRROR`` (a base URL or folder) replaces the official host: the file is
then fetched from ``$W2V_HUB_MIRROR/<file name>`` (air-gapped clusters, tests).

``fbank`` and ``mfcc`` are names too; they need no weights (see
:mod:`w2vtools.models.baselines`) and resolve to themselves.

Example:
    >>> sorted(MODELS)[:3]
    ['vq-wav2vec', 'vq-wav2vec-kmeans', 'wav2vec-large']
    >>> path = resolve("wav2vec2-base")      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write

log = logging.getLogger("w2v.hub")

FAIRSEQ = "https://dl.fbaipublicfiles.com/fairseq/wav2vec/"


@dataclass(frozen=True)
class NamedModel:
    name: str
    url: str
    family: str  # wav2vec | vq-wav2vec | wav2vec2
    description: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _m(name: str, file: str, family: str, description: str) -> NamedModel:
    return NamedModel(name, FAIRSEQ + file, family, description)


# The official fairseq releases (examples/wav2vec/README.md and examples/wav2vec/xlsr/README.md).
MODELS: dict[str, NamedModel] = {
    m.name: m
    for m in [
        _m("wav2vec-large", "wav2vec_large.pt", "wav2vec", "wav2vec (2019) large, LibriSpeech 960h"),
        _m("vq-wav2vec", "vq-wav2vec.pt", "vq-wav2vec", "vq-wav2vec Gumbel, LibriSpeech 960h"),
        _m("vq-wav2vec-kmeans", "vq-wav2vec_kmeans.pt", "vq-wav2vec", "vq-wav2vec k-means, LibriSpeech 960h"),
        _m("wav2vec2-base", "wav2vec_small.pt", "wav2vec2", "wav2vec 2.0 BASE, LibriSpeech 960h, no fine-tuning"),
        _m("wav2vec2-base-10m", "wav2vec_small_10m.pt", "wav2vec2", "BASE fine-tuned (CTC) on 10 min"),
        _m("wav2vec2-base-100h", "wav2vec_small_100h.pt", "wav2vec2", "BASE fine-tuned (CTC) on 100 h"),
        _m("wav2vec2-base-960h", "wav2vec_small_960h.pt", "wav2vec2", "BASE fine-tuned (CTC) on 960 h"),
        _m("wav2vec2-large", "libri960_big.pt", "wav2vec2", "wav2vec 2.0 LARGE, LibriSpeech 960h, no fine-tuning"),
        _m("wav2vec2-large-960h", "wav2vec_big_960h.pt", "wav2vec2", "LARGE fine-tuned (CTC) on 960 h"),
        _m("wav2vec2-large-lv60", "wav2vec_vox_new.pt", "wav2vec2", "wav2vec 2.0 LARGE, Libri-Light 60k h"),
        _m("wav2vec2-large-lv60-960h", "wav2vec2_vox_960h_new.pt", "wav2vec2", "LARGE LV-60 fine-tuned (CTC) on 960 h"),
        _m("wav2vec2-large-lv60-st-960h", "wav2vec_vox_960h_pl.pt", "wav2vec2", "LARGE LV-60 + self-training, 960 h"),
        _m("xlsr-53", "xlsr_53_56k.pt", "wav2vec2", "XLSR-53, 56k h in 53 languages"),
        _m("xls-r-300m", "xlsr2_300m.pt", "wav2vec2", "XLS-R 300M, 436k h in 128 languages"),
        _m("xls-r-1b", "xlsr2_960m_1000k.pt", "wav2vec2", "XLS-R 1B, 436k h in 128 languages"),
        _m("xls-r-2b", "xlsr2_2B_1000k.pt", "wav2vec2", "XLS-R 2B, 436k h in 128 languages"),
    ]
}

BASELINE_NAMES = ("fbank", "mfcc")


def home() -> Path:
    """The cache folder: ``$W2V_HOME`` or ``~/.cache/w2v``."""
    return Path(os.environ.get("W2V_HOME") or Path.home() / ".cache" / "w2v")


def local_path(name: str) -> Path:
    """Where the named model lives (whether or not it is there yet)."""
    return home() / "models" / MODELS[name].filename


def source_url(name: str) -> str:
    """The address the named model is fetched from (the mirror when ``$W2V_HUB_MIRROR`` is set)."""
    model = MODELS[name]
    mirror = os.environ.get("W2V_HUB_MIRROR")
    if not mirror:
        return model.url
    if "://" not in mirror:
        mirror = Path(mirror).resolve().as_uri()
    return mirror.rstrip("/") + "/" + model.filename


def is_named(spec: str) -> bool:
    return str(spec) in MODELS or str(spec) in BASELINE_NAMES


def resolve(name: str, *, download: bool = True, timeout: float = 60.0) -> str:
    """The local path of a named model, fetched once; any other spec is returned unchanged.

    Args:
        name: a name from :data:`MODELS`, ``fbank``/``mfcc`` (returned as is), or a path.
        download: fetch when missing (else a W2VError saying what to download where).
        timeout: seconds to wait for the server to answer.

    Raises:
        W2VError: the download failed; the message names the URL and the destination.

    Example:
        >>> resolve("fbank")
        'fbank'
        >>> resolve("checkpoints/mine.pt")
        'checkpoints/mine.pt'
    """
    name = str(name)
    if name not in MODELS:
        return name
    dest = local_path(name)
    if dest.is_file():
        return str(dest)
    url = source_url(name)
    manual = (
        f"download {MODELS[name].url} yourself and put it at {dest} "
        f"(or set W2V_HOME to the folder holding models/{dest.name}, or W2V_HUB_MIRROR to a mirror)"
    )
    if not download:
        raise W2VError(f"model {name!r} is not in the cache: {manual}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s (%s) from %s to %s", name, MODELS[name].description, url, dest)
    # atomic_write: a download cut short never leaves a file that looks like the model.
    with atomic_write(dest, "wb") as out:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0)
                _copy_with_progress(resp, out, total, name)
                got = out.tell()
                if total and got != total:
                    raise W2VError(f"{url}: download stopped at {got} of {total} bytes; {manual}")
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            raise W2VError(f"cannot download model {name!r} from {url} ({reason}); {manual}") from None
    return str(dest)


def _copy_with_progress(resp, out, total: int, name: str) -> None:
    from tqdm import tqdm

    with tqdm(total=total or None, unit="B", unit_scale=True, desc=name, leave=False, disable=None) as bar:
        while True:
            block = resp.read(1 << 20)
            if not block:
                break
            out.write(block)
            bar.update(len(block))


def describe() -> str:
    """A table of the named models (name, family, file, what it is)."""
    rows = [f"{m.name:30s} {m.family:11s} {m.filename:26s} {m.description}" for m in MODELS.values()]
    rows += ["fbank                          baseline    (no weights)               80 Kaldi log mel filterbanks"]
    rows += ["mfcc                           baseline    (no weights)               13 Kaldi MFCCs"]
    return "\n".join(rows)


__all__ = ["MODELS", "NamedModel", "resolve", "home", "local_path", "source_url", "is_named", "describe"]
