#!/usr/bin/env python3
"""CTC log-probabilities of a downstream model (w2v finetune --features) over stored features.

``w2v decode --model`` runs checkpoints that take audio; a model trained on
stored features (fbank, wav2vec 2.0 layers) takes the same features at test
time. This script runs such a checkpoint over a features file and writes the
log-probabilities in the form ``w2v decode --emissions`` reads (HDF5 or Kaldi
ark/scp with the attributes ``log_probs``, ``tokens``, ``frame_shift``), so
viterbi and KenLM decoding of the baselines go through the same decoder as
every other system.

Example:
    python local/downstream_emissions.py exp/fbank_ds_10pct/checkpoint_last.pt \
        exp/feats/fbank_test.h5 exp/fbank_ds_10pct/decode_test_viterbi/emissions.1.h5 --shard 1/2
    w2v decode --emissions exp/fbank_ds_10pct/decode_test_viterbi/emissions.1.h5 -o hyp.1.txt
"""

from __future__ import annotations

import argparse
import sys

import torch

from w2vtools.errors import W2VError
from w2vtools.featurize import select_shard
from w2vtools.formats.features import open_feature_writer, open_features
from w2vtools.models.checkpoint import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a downstream checkpoint (w2v finetune --features)")
    ap.add_argument("features", help="features spec (*.h5, scp:feats.scp, ark:f.ark)")
    ap.add_argument("output", help="emissions spec to write (*.h5, ark,scp:a.ark,a.scp)")
    ap.add_argument("--shard", default=None, help="K/N: only the K-th of N contiguous parts")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        loaded = load_model(args.model)
        if loaded.task != "downstream" or not loaded.dictionary:
            raise W2VError(f"{args.model}: not a downstream CTC model (task {loaded.task!r})")
        model = loaded.model.eval()
        reader = open_features(args.features)
        keys = list(reader.keys())
        if args.shard:
            k, n = (int(x) for x in args.shard.split("/"))
            keys = select_shard(keys, (k, n))
        attrs = {"log_probs": True, "tokens": list(loaded.dictionary), "frame_shift": float(model.frame_shift),
                 "model": str(args.model)}
        with open_feature_writer(args.output, attrs=attrs, resume=False) as writer, torch.inference_mode():
            for uid in keys:
                feats = torch.from_numpy(reader[uid]).float()[None]
                if feats.shape[-1] != model.input_dim:
                    raise W2VError(f"{args.features}: {uid} has {feats.shape[-1]}-dimensional features, "
                                   f"{args.model} takes {model.input_dim}")
                logits, _ = model(feats, None)
                writer.write(uid, torch.log_softmax(logits[0].float(), dim=-1).numpy())
        reader.close()
    except W2VError as e:
        print(f"downstream_emissions.py: error: {e}", file=sys.stderr)
        return 1
    print(f"downstream_emissions.py: {len(keys)} utterances -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
