"""Models of the wav2vec family, pure ``nn.Module``s with a dataclass config.

Layout (one file per family, whisper-style):

* ``wav2vec.py``   wav2vec (2019) and vq-wav2vec (encoder, aggregator, quantizer)
* ``wav2vec2.py``  wav2vec 2.0 / XLS-R (feature encoder, masking, Transformer, quantizer)
* ``layers.py``    blocks the families share (the masked float32 group norm)
* ``quantizers.py`` Gumbel-softmax and online k-means vector quantizers
* ``ctc.py``       a pretrained encoder plus a linear CTC head
* ``downstream.py`` CTC acoustic models on stored features (conv, BiLSTM)
* ``presets.py``   every named architecture (BASE, LARGE, XLS-R, tiny, downstream, ...)
* ``registry.py``  families and tasks -> classes, configs <-> plain dicts (imports none of ours)
* ``checkpoint.py`` our checkpoint format (:class:`~w2vtools.models.checkpoint.LoadedModel`, save, read)
* ``fairseq.py``, ``huggingface.py``: import/export, one key mapping per source
* ``hub.py``       named pretrained models, fetched once
* ``loading.py``   :func:`~w2vtools.models.loading.load_model` for every source
* ``describe.py``  what a model is (``w2v checkpoint inspect``) and format conversion

Imports point one way: registry, layers -> the models -> checkpoint -> the importers
-> loading -> describe.

Parameter names follow fairseq's, so importing fairseq weights is a near-identity map.

Every *encoder* (wav2vec, vq-wav2vec, wav2vec 2.0) offers::

    sample_rate: int                      # 16000
    frame_shift: float                    # seconds per output frame (0.01 or 0.02)
    num_frames(num_samples: int) -> int   # output length for an input length
    extract_features(source, padding_mask=None, *, output="default", layer=None)
        -> FeatureOutput(features, padding_mask)

``source`` is (B, S) float32 raw waveform at ``sample_rate`` (the model applies its
own input normalization when its config says so); ``padding_mask`` is (B, S) bool,
True at padding. An utterance's features are the same batched or alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FeatureOutput:
    """Frame-level representations.

    Attributes:
        features: (B, T, D), or a list of (B, T, D) tensors for ``layer="all"``.
        padding_mask: (B, T) bool, True at padded frames; None when nothing is padded.
    """

    features: torch.Tensor | list[torch.Tensor]
    padding_mask: torch.Tensor | None = None
