"""``w2v finetune`` (audio route): presets, labels and dictionary, freezing, exact resume, and
fine-tuning further from Hugging Face and fairseq CTC checkpoints, on real FSDD audio."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from w2vtools.errors import W2VError
from w2vtools.finetune import (
    FinetuneObjective,
    build_symbols,
    encode_labels,
    finetune,
    label_lines,
    resolve_finetune_config,
)
from w2vtools.formats.corpus import read_corpus
from w2vtools.models.checkpoint import LoadedModel, save_model
from w2vtools.models.loading import load_model
from w2vtools.train.schedules import make_schedule

REPO = Path(__file__).resolve().parents[1]
DIGITS = "zero one two three four five six seven eight nine".split()


# ---------------------------------------------------------------------------------------------
# Presets: fairseq examples/wav2vec/config/finetuning/base_*.yaml


@pytest.mark.parametrize("name,lr,updates,mask,channel,layerdrop,freeze,update_freq", [
    ("10m", 5e-5, 13_000, 0.65, 0.25, 0.1, 10_000, 4),
    ("1h", 5e-5, 13_000, 0.65, 0.25, 0.1, 10_000, 4),
    ("10h", 5e-5, 20_000, 0.65, 0.5, 0.05, 10_000, 4),
    ("100h", 3e-5, 80_000, 0.65, 0.5, 0.1, 0, 4),
    ("960h", 1e-5, 320_000, 0.5, 0.1, 0.1, 0, 1),
])
def test_published_presets(name, lr, updates, mask, channel, layerdrop, freeze, update_freq):
    cfg = resolve_finetune_config("audio", name)
    m = cfg.model.overrides
    assert (cfg.optim.lr, cfg.optim.max_update, cfg.optim.update_freq) == (lr, updates, update_freq)
    assert (m["mask_prob"], m["mask_channel_prob"], m["layerdrop"]) == (mask, channel, layerdrop)
    assert m["mask_channel_length"] == 64 and m["mask_length"] == 10 and m["feature_grad_mult"] == 0.0
    assert m["activation_dropout"] == 0.1 and m["apply_mask"] is True
    assert cfg.run.freeze_updates == freeze and cfg.run.train_during_freeze == ["proj."]
    assert cfg.run.freeze_feature_encoder and cfg.run.best_metric == "wer" and not cfg.run.maximize_best
    o = cfg.optim
    assert (o.schedule, tuple(o.phase_ratio), o.init_lr_scale, o.final_lr_scale) == ("tri_stage", (0.1, 0.4, 0.5),
                                                                                     0.01, 0.05)
    assert (tuple(o.betas), o.eps, o.weight_decay) == ((0.9, 0.98), 1e-8, 0.0)
    assert cfg.data.max_samples_per_batch == 3_200_000 and cfg.data.pad
    s = make_schedule(o.schedule, lr=o.lr, total_updates=o.max_update, phase_ratio=o.phase_ratio,
                      init_lr_scale=o.init_lr_scale, final_lr_scale=o.final_lr_scale)
    assert s(0) == pytest.approx(0.01 * lr)
    assert s(updates // 10) == pytest.approx(lr) and s(updates // 2) == pytest.approx(lr)
    assert s(updates) == pytest.approx(0.05 * lr)


def test_config_overrides_and_rejections():
    cfg = resolve_finetune_config("audio", "tiny", sets=["model.mask_prob=0.5", "run.freeze_updates=7"])
    assert cfg.model.overrides["mask_prob"] == 0.5 and cfg.run.freeze_updates == 7
    with pytest.raises(W2VError, match="not a CTCConfig field"):
        resolve_finetune_config("audio", "tiny", sets=["model.lstm_hidden=4"])
    with pytest.raises(W2VError, match="run.freeze_updates"):
        resolve_finetune_config("audio", "tiny", sets=["model.freeze_finetune_updates=4"])
    with pytest.raises(W2VError, match="unknown audio-route preset"):
        resolve_finetune_config("audio", "base")
    feats = resolve_finetune_config("features", "tiny", arch="conv", sets=["model.lstm_layers=3"])
    assert feats.model.arch == "conv" and feats.model.overrides == {"lstm_layers": 3}
    with pytest.raises(W2VError, match="not a DownstreamConfig field"):
        resolve_finetune_config("features", "tiny", sets=["model.mask_prob=0.5"])


# ---------------------------------------------------------------------------------------------
# Labels and dictionary


def _fsdd_tsv(fsdd: Path, out: Path, name: str, stems: list[str], *, ltr: bool = True, text: bool = True) -> Path:
    import soundfile as sf

    out.mkdir(parents=True, exist_ok=True)
    tsv = out / f"{name}.tsv"
    with open(tsv, "w") as t:
        t.write(f"{fsdd}\n")
        for s in stems:
            t.write(f"{s}.wav\t{sf.info(fsdd / f'{s}.wav').frames}\n")
    if ltr:
        (out / f"{name}.ltr").write_text("".join(" ".join(DIGITS[int(s[0])].upper()) + " |\n" for s in stems))
    if text:
        with open(out / "text", "a") as f:
            for s in stems:
                f.write(f"{s} {DIGITS[int(s[0])]}\n")
    return tsv


def _stems(speakers=("george", "jackson", "lucas"), takes=range(5, 7)) -> list[str]:
    return [f"{d}_{spk}_{i}" for d in range(10) for spk in speakers for i in takes]


def test_label_sources_agree(fsdd, tmp_path):
    stems = _stems(takes=[5])
    tsv = _fsdd_tsv(fsdd, tmp_path, "train", stems)
    (tmp_path / "train.wrd").write_text("".join(DIGITS[int(s[0])] + "\n" for s in stems))
    utts = read_corpus(tsv)
    from_ltr = label_lines(str(tsv), utts, "ltr")
    assert from_ltr["3_george_5"] == "T H R E E |"
    assert label_lines(str(tsv), utts, "wrd") == from_ltr  # letters derived, upper-cased
    assert label_lines(str(tsv), utts, str(tmp_path / "text")) == from_ltr  # Kaldi text by id
    assert label_lines(str(tsv), utts, str(tmp_path / "train.ltr")) == from_ltr
    # a TSV's .wrd sibling is its text when no labels are named
    assert label_lines(str(tsv), read_corpus(tsv), None) == from_ltr
    (tmp_path / "train.ltr").write_text("Z E R O |\n")
    with pytest.raises(W2VError, match="line-aligned"):
        label_lines(str(tsv), utts, "ltr")
    with pytest.raises(W2VError, match="no such file"):
        label_lines(str(tsv), utts, "phn")
    with pytest.raises(W2VError, match="not one"):
        label_lines(None, None, "ltr")


def test_dictionary_and_out_of_dictionary_report(caplog):
    lines = {"a": "Z E R O |", "b": "O N E |", "c": "T W O , |", "d": "O N E ! ! |"}
    symbols = build_symbols({k: v for k, v in lines.items() if k != "c" and k != "d"})
    assert symbols == ["E", "O", "|", "N", "R", "Z"]  # most frequent first, ties by symbol
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *symbols]
    with caplog.at_level(logging.WARNING, logger="w2v.finetune"):
        ids = encode_labels(lines, tokens, name="train")
    assert ids["a"] == [tokens.index(c) for c in "ZERO|"]
    assert ids["c"][3] == 3  # ',' -> <unk>
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "'!' x2 (e.g. d)" in msg and "',' x1 (e.g. c)" in msg and "mapped to <unk>" in msg


def test_objective_reports_wer_and_cer():
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B"]
    obj = FinetuneObjective(dictionary=tokens)

    class Fixed(torch.nn.Module):
        def forward(self, source, padding_mask=None):
            # best path: A A <s> B | A  -> "AB A"
            path = [5, 5, 0, 6, 4, 5]
            logits = torch.full((1, len(path), len(tokens)), -5.0)
            logits[0, torch.arange(len(path)), torch.tensor(path)] = 5.0
            return logits, None

    model = Fixed().eval()
    batch = {"source": torch.zeros(1, 10), "targets": torch.tensor([[5, 6, 4, 6, 4]]),  # "AB B"
             "target_lengths": torch.tensor([5])}
    _, _, stats = obj(model, batch)
    m = obj.metrics({**stats, "_batches": 1})
    assert m["wer"] == pytest.approx(50.0)  # AB A vs AB B
    assert m["cer"] == pytest.approx(25.0)  # "AB A" vs "AB B": 1 of 4 characters


# ---------------------------------------------------------------------------------------------
# Training on FSDD


def _tiny_pretrained(path: Path) -> Path:
    from w2vtools.models.presets import get_preset
    from w2vtools.models.wav2vec2 import Wav2Vec2Model

    torch.manual_seed(0)
    cfg = get_preset("wav2vec2", "tiny")
    save_model(path, LoadedModel("wav2vec2", "pretrain", Wav2Vec2Model(cfg), cfg))
    return path


def _records(save: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (save / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture
def fsdd_small(fsdd, tmp_path):
    train = _fsdd_tsv(fsdd, tmp_path / "data", "train", _stems(takes=[5, 6]))
    valid = _fsdd_tsv(fsdd, tmp_path / "data", "valid", _stems(speakers=("george", "jackson"), takes=[0]))
    return train, valid


def test_finetune_from_tiny_pretrained_freezes_and_saves(fsdd_small, tmp_path, w2v):
    train, valid = fsdd_small
    init = _tiny_pretrained(tmp_path / "pt.pt")
    save = tmp_path / "ft"
    proc = w2v("finetune", train, "--labels", "ltr", "--valid", valid, "--init", init, "--preset", "tiny",
               "--max-update", "8", "--freeze-updates", "4", "--valid-interval", "4",
               "--set", "run.log_interval=1", "--save-dir", save, "--threads", "1")
    assert "freeze_updates: 4" in proc.stdout
    valid_records = _records(save, "valid")
    assert [r["update"] for r in valid_records] == [4, 8]
    assert all({"wer", "cer", "uer", "loss"} <= set(r) for r in valid_records)
    assert len(_records(save, "train")) == 8
    # dictionary counted from the labels (no dict.ltr.txt given), written beside the checkpoints
    symbols = [line.split()[0] for line in (save / "dict.ltr.txt").read_text().splitlines()]
    assert set(symbols) == set("".join(DIGITS).upper()) | {"|"}
    before = load_model(init).model.state_dict()
    ft = load_model(save / "checkpoint_last.pt")
    assert ft.task == "ctc" and ft.family == "wav2vec2" and ft.dictionary == ["<s>", "<pad>", "</s>", "<unk>", *symbols]
    after = ft.model.state_dict()
    cnn = [k for k in before if k.startswith("feature_extractor.")]
    assert cnn and all(torch.equal(before[k], after["encoder." + k]) for k in cnn)  # the CNN never trains
    layer = "encoder.layers.0.fc1.weight"
    assert not torch.equal(before[layer], after["encoder." + layer])  # trained after the freeze
    assert ft.model.cfg.mask_channel_length == 8 and ft.model.cfg.freeze_finetune_updates == 4
    # a run that only covers the freeze leaves the Transformer untouched
    frozen = tmp_path / "frozen"
    finetune(str(train), save_dir=frozen, preset="tiny", labels="ltr", init=str(init), print_config=False,
             sets=["optim.max_update=3", "run.freeze_updates=10", "run.threads=1"])
    f = load_model(frozen / "checkpoint_last.pt").model.state_dict()
    assert torch.equal(before[layer], f["encoder." + layer])
    assert not torch.equal(f["proj.weight"], after["proj.weight"])


def test_interrupt_and_resume_gives_the_same_losses(fsdd_small, tmp_path):
    train, valid = fsdd_small
    init = _tiny_pretrained(tmp_path / "pt.pt")
    common = dict(preset="tiny", labels="ltr", valid=str(valid), init=str(init), print_config=False)
    sets = ["optim.max_update=8", "run.freeze_updates=3", "run.log_interval=1", "run.valid_interval=0",
            "run.threads=1", "data.num_workers=1"]
    full = tmp_path / "full"
    finetune(str(train), save_dir=full, sets=sets, **common)
    part = tmp_path / "part"
    finetune(str(train), save_dir=part, sets=sets + ["run.stop_at_update=5"], **common)
    assert [r["update"] for r in _records(part, "train")] == [1, 2, 3, 4, 5]
    finetune(str(train), save_dir=part, sets=sets, resume=True, **common)
    a = {r["update"]: r["loss"] for r in _records(full, "train")}
    b = {r["update"]: r["loss"] for r in _records(part, "train")}
    assert sorted(b) == list(range(1, 9)) and sorted(a) == list(range(1, 9))
    for u in range(1, 9):
        assert b[u] == pytest.approx(a[u], rel=1e-5, abs=1e-5), u
    va, vb = _records(full, "valid")[-1], _records(part, "valid")[-1]
    assert vb["loss"] == pytest.approx(va["loss"], rel=1e-5) and vb["wer"] == va["wer"]


def _hf_ctc_fixture(folder: Path) -> list[str]:
    transformers = pytest.importorskip("transformers")
    vocab = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVKXJQZ'"]
    cfg = transformers.Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0,
        feat_extract_norm="group", do_stable_layer_norm=False, mask_time_length=2,
    )
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForCTC(cfg)
    model.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    return vocab


def _decode_lines(w2v, corpus: Path, model: Path, out: Path) -> dict[str, str]:
    w2v("decode", corpus, "--model", model, "-o", out)
    return dict((line.split(" ", 1) + [""])[:2] for line in out.read_text().splitlines())


@pytest.mark.parametrize("source", ["huggingface", "fairseq"])
def test_ctc_checkpoints_fine_tune_further_and_decode(source, fsdd_small, tmp_path, w2v):
    train, valid = fsdd_small
    if source == "huggingface":
        init = tmp_path / "hf"
        _hf_ctc_fixture(init)
    else:
        init = REPO / "tests" / "fixtures" / "fairseq" / "wav2vec2_ctc_cfg.pt"
    start = load_model(init)
    assert start.task == "ctc" and start.source == source
    save = tmp_path / "ft"
    w2v("finetune", train, "--valid", valid, "--init", init, "--preset", "tiny", "--max-update", "4",
        "--freeze-updates", "100", "--valid-interval", "2", "--lr", "1e-4", "--save-dir", save, "--threads", "1")
    ft = load_model(save / "checkpoint_best.pt")
    assert ft.source == "w2v" and ft.task == "ctc" and ft.dictionary == start.dictionary
    s0, s1 = start.model.state_dict(), ft.model.state_dict()
    # frozen Transformer: identical; the output layer continued from the checkpoint's, not re-initialized
    # (the quantizer and contrastive projections are not part of a CTC checkpoint: random at each load)
    pretraining_only = ("encoder.quantizer.", "encoder.project_q.", "encoder.final_proj.")
    encoder_keys = [k for k in s0 if k.startswith("encoder.") and not k.startswith(pretraining_only)]
    assert len(encoder_keys) > 20
    assert [k for k in encoder_keys if not torch.equal(s0[k], s1[k])] == []
    w0, w1 = s0["proj.weight"].flatten(), s1["proj.weight"].flatten()
    assert not torch.equal(w0, w1)
    assert torch.nn.functional.cosine_similarity(w0, w1, dim=0) > 0.99
    hyp = _decode_lines(w2v, valid, save / "checkpoint_best.pt", tmp_path / "hyp.txt")
    assert sorted(hyp) == sorted(u.uid for u in read_corpus(valid))
