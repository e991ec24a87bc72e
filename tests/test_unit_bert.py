"""BERT on units (vq-wav2vec's BERT): unit files, span masking, the masked-unit objective,
``w2v pretrain --arch unit-bert`` (vocabulary, logs, checkpoints, exact resume, 2 gloo
processes == update_freq 2), featurize --bert, fairseq interop. The FSDD done-when (a tiny
BERT on a tiny vq-wav2vec's units beating the most-frequent-unit baseline on held-out
utterances, its features training the downstream model) is tests/test_unit_bert_fsdd.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from w2vtools.errors import W2VError
from w2vtools.formats.units import MASK, parse_unit, read_units, unit_vocabulary
from w2vtools.models.token_transformer import TokenTransformer
from w2vtools.models.unit_bert import UnitBertConfig, unit_bert_preset
from w2vtools.train.data import BatchKey
from w2vtools.train.objectives import MaskedUnitObjective, span_mask
from w2vtools.train.units_data import UnitDataset

from test_pretrain import losses, pretrain_cli


def synthetic_units(path: Path, n: int, seed: int) -> Path:
    """Units with structure a small BERT learns in a few dozen updates: each utterance is three
    runs of 10-30 frames of a unit among 12 (``g0-g1`` tokens), so a masked unit is most likely
    its unmasked neighbours' while a unigram guess is right one time in 12."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        seq: list[str] = []
        for a in rng.integers(12, size=3):
            seq += [f"{a}-{(a * 5) % 12}"] * int(rng.integers(10, 31))
        lines.append(f"utt{seed}_{i} {' '.join(seq)}\n")
    path.write_text("".join(lines))
    return path


# ---------------------------------------------------------------------------------------------
# Pieces


def test_read_units_and_vocabulary(tmp_path):
    f = tmp_path / "u.txt"
    f.write_text("a 1-2 3-4\n\nb 3-4\n")
    assert read_units(f) == {"a": ["1-2", "3-4"], "b": ["3-4"]}
    for body, message in (("a 1-2\na 3-4\n", "u.txt:2: utterance 'a' appears twice"),
                          ("a\n", "u.txt:1: utterance 'a' has no units"), ("", "no utterances")):
        f.write_text(body)
        with pytest.raises(W2VError, match=message):
            read_units(f)
    assert unit_vocabulary(["3-4", "1-2"]) == ["<s>", "<pad>", "</s>", "<unk>", "3-4", "1-2", MASK]
    assert [parse_unit(t, 2, 4) for t in ("1-3", "7", "4-0", "1-2-3", "16", "<unk>")] == [7, 7, None, None, None,
                                                                                         None]


def test_span_mask_masks_spans_of_ten_about_forty_percent():
    torch.manual_seed(3)
    mask = span_mask([2000] * 20 + [7], 0.05, 10)
    assert mask.shape == (21, 2000)
    fraction = mask[:20].float().mean().item()
    assert 0.36 < fraction < 0.44  # 1 - 0.95**10 = 0.40 when spans overlap freely
    # every masked run is at least one whole span long (or cut by the sequence's end)
    runs = []
    for row in mask[:20].int().tolist():
        edges = np.flatnonzero(np.diff([0, *row, 0]))
        runs += [end - start for start, end in zip(edges[0::2], edges[1::2]) if end < len(row)]
    assert min(runs) >= 10
    # a short sequence gets one span at least, and nothing past its end
    assert 1 <= int(mask[20].sum()) <= 7 and not mask[20, 7:].any()
    torch.manual_seed(3)
    assert torch.equal(span_mask([2000] * 20 + [7], 0.05, 10), mask)


def test_corrupt_replaces_masked_units_as_configured():
    tokens = torch.full((4, 5000), 7)
    masked = torch.zeros_like(tokens, dtype=torch.bool)
    masked[:, 1:4000] = True
    plain = MaskedUnitObjective(vocab_size=30, mask_idx=29)
    out = plain.corrupt(tokens, masked)
    assert out[masked].eq(29).all() and out[~masked].eq(7).all()
    bert = MaskedUnitObjective(vocab_size=30, mask_idx=29, leave_unmasked_prob=0.1, random_token_prob=0.1)
    torch.manual_seed(0)
    out = bert.corrupt(tokens, masked)[masked]
    assert out.eq(29).float().mean().item() == pytest.approx(0.8, abs=0.01)
    assert out.eq(7).float().mean().item() == pytest.approx(0.1 + 0.1 / 25, abs=0.01)
    assert out.min() >= 4 and out.max() <= 29  # random units: never a marker


def test_unit_dataset_rows_crops_and_unknown_units(caplog):
    vocab = unit_vocabulary(["1-1", "2-2"])
    units = {"short": ["1-1", "2-2", "9-9"], "long": ["1-1"] * 20 + ["2-2"] * 20}
    ds = UnitDataset(units, vocab, max_tokens=12, name="valid")
    assert ds.num_unknown == 1 and "1 of 43 units" in caplog.text
    assert ds.sizes.tolist() == [5, 12]
    batch = ds[BatchKey(0, 3, (0, 1))]
    assert batch["source"][0].tolist() == [0, 4, 5, 3, 2, 1, 1, 1, 1, 1, 1, 1]
    long_row = batch["source"][1].tolist()
    assert long_row[0] == 0 and long_row[-1] == 2 and len(long_row) == 12
    assert batch["unit_lengths"].tolist() == [3, 10] and batch["num_samples"] == 13
    assert torch.equal(ds[BatchKey(0, 3, (0, 1))]["source"], batch["source"])  # crops are seeded
    with pytest.raises(W2VError, match="no utterances left"):
        UnitDataset({"a": ["1-1"]}, vocab, max_tokens=12, min_units=2)


def test_objective_reports_accuracy_and_baseline():
    vocab = unit_vocabulary([f"{i}-0" for i in range(8)])
    ds = UnitDataset({f"u{i}": [f"{(i + j) % 8}-0" for j in range(40)] for i in range(6)}, vocab, max_tokens=64)
    torch.manual_seed(0)
    model = TokenTransformer(unit_bert_preset("tiny", len(vocab))).eval()
    objective = MaskedUnitObjective(vocab_size=len(vocab), mask_idx=len(vocab) - 1, most_frequent=4)
    loss_sum, n, stats = objective(model, ds[BatchKey(0, 0, tuple(range(6)))])
    assert n == stats["count"] > 0 and loss_sum.item() > 0
    assert 0 < stats["baseline_correct"] < n
    metrics = objective.metrics(stats)
    assert set(metrics) >= {"loss", "accuracy", "baseline_accuracy", "masked_fraction"}
    assert metrics["loss"] == pytest.approx(loss_sum.item() / n / np.log(2))


def test_unit_bert_config_checks():
    assert UnitBertConfig(vocab_size=20).mask_prob == 0.05
    with pytest.raises(ValueError, match="bidirectional"):
        UnitBertConfig(vocab_size=20, causal=True)
    with pytest.raises(ValueError, match="sum to at most 1"):
        UnitBertConfig(vocab_size=20, leave_unmasked_prob=0.6, random_token_prob=0.6)


# ---------------------------------------------------------------------------------------------
# w2v pretrain --arch unit-bert

FAST = ["--arch", "unit-bert", "--preset", "tiny", "--threads", "1", "--set", "data.max_samples_per_batch=1200",
        "--set", "run.log_interval=1", "--set", "run.valid_interval=40", "--set", "run.save_interval=0",
        "--set", "run.tensorboard=false", "--set", "optim.warmup_updates=8", "--lr", "3e-3", "--max-update", "80"]


@pytest.fixture(scope="module")
def units(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("units")
    return synthetic_units(d / "train.txt", 240, 1), synthetic_units(d / "valid.txt", 40, 2)


@pytest.fixture(scope="module")
def reference(units, tmp_path_factory) -> Path:
    """The uninterrupted run: 1 process, update_freq 2, 80 updates."""
    out = tmp_path_factory.mktemp("ref") / "bert"
    pretrain_cli(units[0], "--valid", units[1], "--save-dir", out, "--update-freq", "2", *FAST)
    return out


def _records(save_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (save_dir / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.slow
def test_pretrain_learns_and_saves_a_loadable_bert(units, reference):
    from w2vtools.formats.labels import read_dictionary
    from w2vtools.models.loading import load_model

    symbols = read_dictionary(reference / "dict.txt")
    assert len(symbols) == 12
    loaded = load_model(reference / "checkpoint_last.pt")
    assert (loaded.family, loaded.task) == ("unit-bert", "pretrain")
    assert loaded.dictionary == unit_vocabulary(symbols) and loaded.model.cfg.vocab_size == 17
    assert isinstance(loaded.model, TokenTransformer) and loaded.model.cfg.mask_length == 10
    valid = _records(reference, "valid")
    assert [r["update"] for r in valid] == [40, 80]
    last = valid[-1]
    # a masked unit is most likely its neighbours'; a unigram guess is right one time in 12
    assert last["accuracy"] > last["baseline_accuracy"] + 0.1, last
    assert 0.3 < last["masked_fraction"] < 0.6
    best = load_model(reference / "checkpoint_best.pt")
    assert best.extra["trainer"]["best"]["metric"] == "accuracy"


@pytest.mark.slow
def test_resume_is_exact(units, reference, tmp_path):
    cut = tmp_path / "cut"
    pretrain_cli(units[0], "--valid", units[1], "--save-dir", cut, "--update-freq", "2", "--stop-at-update", "60",
                 *FAST)
    proc = pretrain_cli(units[0], "--valid", units[1], "--save-dir", cut, "--update-freq", "2", "--resume", *FAST)
    assert "at update 60" in proc.stderr
    expected, resumed = losses(reference), losses(cut)
    for n in range(61, 81):
        assert resumed[n] == pytest.approx(expected[n], abs=1e-5), n


@pytest.mark.slow
def test_two_gloo_processes_equal_update_freq_two(units, reference, tmp_path):
    out = tmp_path / "ddp"
    proc = pretrain_cli(units[0], "--valid", units[1], "--save-dir", out, "--stop-at-update", "20", *FAST, procs=2)
    assert "2 process(es) x update_freq 1" in proc.stderr
    single, ddp = losses(reference), losses(out)
    assert sorted(ddp) == list(range(1, 21))
    for n in range(1, 21):  # the same batches and masks; only float summation order differs
        assert ddp[n] == pytest.approx(single[n], abs=2e-3, rel=1e-3), n


def test_pretrain_errors(units, tmp_path, w2v):
    bad = w2v("pretrain", units[0], "--arch", "unit-bert", "--preset", "tiny", "--save-dir", tmp_path / "a",
              "--set", "model.vocab_size=9", check=False)
    assert bad.returncode == 1 and "model.vocab_size is set by the command itself" in bad.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("x\n")
    bad = w2v("pretrain", empty, "--arch", "unit-bert", "--preset", "tiny", "--save-dir", tmp_path / "b",
              check=False)
    assert bad.returncode == 1 and "empty.txt:1: utterance 'x' has no units" in bad.stderr


# ---------------------------------------------------------------------------------------------
# Featurize: the quantizer + BERT as one encoder


@pytest.fixture(scope="module")
def vq_and_bert(tmp_path_factory):
    """A random vq-wav2vec (k-means, 2 groups of 32) and a random unit BERT on every one of its codes."""
    from w2vtools.models.checkpoint import LoadedModel, save_model
    from w2vtools.models.presets import get_preset
    from w2vtools.models.registry import model_class_for

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(1)
    cfg = get_preset("vq-wav2vec", "kmeans-tiny")
    vq = model_class_for("vq-wav2vec")(cfg).eval()
    save_model(d / "vq.pt", LoadedModel("vq-wav2vec", "pretrain", vq, cfg))
    tokens = unit_vocabulary([f"{a}-{b}" for a in range(32) for b in range(32) if (a + b) % 7])  # some unseen
    bcfg = unit_bert_preset("tiny", len(tokens))
    bert = TokenTransformer(bcfg).eval()
    save_model(d / "bert.pt", LoadedModel("unit-bert", "pretrain", bert, bcfg, dictionary=tokens))
    return d / "vq.pt", d / "bert.pt", vq, bert, tokens


def _bert_by_hand(vq, bert, tokens, wav: torch.Tensor, layer: int | None) -> torch.Tensor:
    """Codes -> '<s> units </s>' -> BERT, the way fairseq's masked_lm task builds a sample."""
    codes = vq.quantize(wav[None])[0].tolist()
    index = {t: i for i, t in enumerate(tokens)}
    ids = [0] + [index.get(f"{a}-{b}", 3) for a, b in codes] + [2]
    with torch.no_grad():
        return bert.features(torch.tensor([ids]), layer=layer)[0, 1:-1]


def test_vq_unit_bert_equals_the_pipeline_by_hand_batched_or_alone(vq_and_bert):
    from w2vtools.models.unit_bert import VQUnitBert

    _, _, vq, bert, tokens = vq_and_bert
    model = VQUnitBert(vq, bert, tokens).eval()
    torch.manual_seed(0)
    waves = [torch.randn(8000), torch.randn(5000)]
    source = torch.zeros(2, 8000)
    source[1, :5000] = waves[1]
    source[0] = waves[0]
    mask = torch.zeros(2, 8000, dtype=torch.bool)
    mask[1, 5000:] = True
    for layer in (0, 1, None):
        out = model.extract_features(source, mask, layer=layer)
        for row, wav in enumerate(waves):
            ref = _bert_by_hand(vq, bert, tokens, wav, layer)
            assert torch.allclose(out.features[row, : len(ref)], ref, atol=1e-5), (layer, row)
        n1 = vq.num_frames(5000)
        assert out.padding_mask[1, n1:].all() and not out.padding_mask[1, :n1].any()
        assert out.features[1, n1:].eq(0).all()
    with pytest.raises(W2VError, match="layers 0..2"):
        model.extract_features(source, layer=3)


def test_vq_unit_bert_refuses_units_of_another_quantizer(vq_and_bert):
    from w2vtools.models.unit_bert import VQUnitBert

    _, _, vq, bert, _ = vq_and_bert
    other = unit_vocabulary([f"{a}-{b}-1" for a in range(32) for b in range(32)])[: bert.cfg.vocab_size]
    other[-1] = MASK
    with pytest.raises(W2VError, match="none of the BERT's .* is a code of this quantizer \\(2 groups of 32\\)"):
        VQUnitBert(vq, bert, other)


def test_featurize_with_bert_writes_bert_layers_at_the_code_rate(tmp_path, w2v, fsdd, vq_and_bert):
    import h5py

    from w2vtools.audio import load_audio

    vq_path, bert_path, vq, bert, tokens = vq_and_bert
    files = sorted(fsdd.glob("*_theo_*.wav"))[:4]
    scp = tmp_path / "wav.scp"
    # one recording of 7 s: longer than the 5.1 s the BERT's 512 positions hold, so it runs in windows
    long = tmp_path / "long.wav"
    import soundfile as sf

    sf.write(long, np.concatenate([sf.read(f, dtype="float32")[0] for f in sorted(fsdd.glob("*_jackson_*.wav"))[:16]]),
             8000)
    scp.write_text("".join(f"{f.stem} {f}\n" for f in files) + f"long {long}\n")
    proc = w2v("featurize", scp, tmp_path / "b.h5", "--model", vq_path, "--bert", bert_path, "--layer", "1")
    assert "run in windows" in proc.stderr
    with h5py.File(tmp_path / "b.h5") as h5:
        assert h5.attrs["family"] == "unit-bert" and h5.attrs["layer"] == "1"
        assert h5.attrs["frame_shift"] == pytest.approx(0.01)
        for f in files:
            wav = torch.from_numpy(load_audio(str(f), sample_rate=16000))
            ref = _bert_by_hand(vq, bert, tokens, wav, 1).numpy()
            np.testing.assert_allclose(h5[f.stem][()], ref, atol=1e-4)
        wav = load_audio(str(long), sample_rate=16000)
        assert len(wav) / 16000 > 7 and h5["long"].shape == (vq.num_frames(len(wav)), 64)
    bad = w2v("featurize", scp, tmp_path / "c.h5", "--model", vq_path, "--bert", bert_path, "--layer", "5",
              check=False)
    assert bad.returncode == 1 and "--layer 5" in bad.stderr and "0..2" in bad.stderr
    bad = w2v("featurize", scp, tmp_path / "d.h5", "--model", "fbank", "--bert", bert_path, check=False)
    assert bad.returncode == 1 and "--model fbank has none" in bad.stderr
    bad = w2v("featurize", scp, tmp_path / "e.h5", "--model", vq_path, "--bert", vq_path, check=False)
    assert bad.returncode == 1 and "not a unit BERT" in bad.stderr


# ---------------------------------------------------------------------------------------------
# fairseq interop: a RoBERTa on vq-wav2vec units, written by fairseq (tools/make_fairseq_fixtures.py)

FAIRSEQ = Path(__file__).resolve().parent / "fixtures" / "fairseq"
BERT_FIXTURE = FAIRSEQ / "unit_bert" / "bert_units_args.pt"


def test_fairseq_roberta_on_units_loads_and_equals_fairseq():
    from w2vtools.formats.labels import read_dictionary
    from w2vtools.models.loading import load_model

    loaded = load_model(BERT_FIXTURE)
    assert (loaded.family, loaded.task, loaded.source) == ("unit-bert", "pretrain", "fairseq")
    assert loaded.dictionary == unit_vocabulary(read_dictionary(FAIRSEQ / "unit_bert" / "dict.txt"))
    # fairseq's masked_lm: mask_prob 0.5 of the tokens in spans of 10 -> a span starts at 5 % of them
    assert (loaded.config.mask_prob, loaded.config.mask_length, loaded.config.random_token_prob) == (0.05, 10, 0.1)
    tokens = torch.from_numpy(np.load(FAIRSEQ / "unit_bert" / "tokens.npy"))[None]
    with torch.no_grad():
        out = loaded.model(tokens, return_all=True)
    layers = np.load(FAIRSEQ / "unit_bert" / "layers.npy")
    assert len(out["layers"]) == len(layers) == 3
    for ours, theirs in zip(out["layers"], layers):
        np.testing.assert_allclose(ours[0].numpy(), theirs, atol=1e-5)
    np.testing.assert_allclose(out["logits"][0].numpy(), np.load(FAIRSEQ / "unit_bert" / "logits.npy"), atol=1e-4)


def test_fairseq_vq_wav2vec_plus_fairseq_bert_features_equal_fairseq(shared_data):
    """audio -> fairseq's Gumbel vq-wav2vec codes -> fairseq's RoBERTa, as one encoder; fairseq made
    the reference from the same clip's samples (fed as they are) and the same files."""
    import soundfile as sf

    from w2vtools.encoders import load_encoder

    enc = load_encoder(str(FAIRSEQ / "vq_wav2vec_gumbel_dictconfig_fp16.pt"), bert=str(BERT_FIXTURE))
    assert enc.family == "unit-bert" and enc.module.units_known == 15
    wav, _ = sf.read(shared_data / "fsdd" / "recordings" / "0_jackson_0.wav", dtype="float32")
    layers = np.load(FAIRSEQ / "unit_bert" / "layers.npy")
    for layer in (0, 1, 2, None):
        feats = enc.module.extract_features(torch.from_numpy(wav)[None], layer=layer).features[0].numpy()
        np.testing.assert_allclose(feats, layers[2 if layer is None else layer][1:-1], atol=1e-5)


def test_older_roberta_files_and_a_missing_dictionary(tmp_path):
    """fairseq's upgrades (``emb_layer_norm``, fused ``in_proj``) and the one-line error without dict.txt."""
    import argparse
    import shutil

    from w2vtools.models.fairseq import safe_torch_load
    from w2vtools.models.loading import load_model

    state = safe_torch_load(BERT_FIXTURE)
    old = {}
    for k, v in state["model"].items():
        k = k.replace(".layernorm_embedding.", ".emb_layer_norm.")
        if ".self_attn.q_proj." in k:
            kind = k.rsplit(".", 1)[1]
            parts = [state["model"][k.replace("q_proj", name)] for name in ("q_proj", "k_proj", "v_proj")]
            old[k.replace(f"q_proj.{kind}", f"in_proj_{kind}")] = torch.cat(parts)
        elif ".self_attn.k_proj." not in k and ".self_attn.v_proj." not in k:
            old[k] = v
    args = argparse.Namespace(**state["args"])
    torch.save({"args": args, "model": old}, tmp_path / "old.pt")
    shutil.copy(FAIRSEQ / "unit_bert" / "dict.txt", tmp_path / "dict.txt")
    a, b = load_model(tmp_path / "old.pt").model, load_model(BERT_FIXTURE).model
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    (tmp_path / "dict.txt").unlink()
    with pytest.raises(W2VError, match="old.pt: a fairseq RoBERTa with 20 tokens; .* put the dict.txt"):
        load_model(tmp_path / "old.pt")
