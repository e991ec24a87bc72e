"""``w2v manifest``: the issue's acceptance checks and each mode, through the real CLI and the library."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from w2vtools import manifest as lib
from w2vtools.errors import PartialFailure, W2VError
from w2vtools.formats import kaldi, labels
from w2vtools.formats.manifest import read_manifest, uids_for


def _rows(tsv):
    man = read_manifest(tsv)
    return man.root, [(it.relpath, it.num_samples) for it in man.items]


def test_fsdd_manifest_split_lengths_and_rerun_identical(tmp_path, fsdd, w2v):
    """Done-when: 3000 rows split into train/valid, num_samples = frames, reruns byte-identical."""
    out1, out2 = tmp_path / "a", tmp_path / "b"
    w2v("manifest", fsdd, "--dest", out1, "--ext", "wav", "--valid-percent", "0.1")
    w2v("manifest", fsdd, "--dest", out2, "--ext", "wav", "--valid-percent", "0.1", "--jobs", "1")
    for name in ("train.tsv", "valid.tsv"):
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes()
    root_t, train = _rows(out1 / "train.tsv")
    root_v, valid = _rows(out1 / "valid.tsv")
    assert root_t == root_v == os.path.realpath(fsdd)
    assert len(train) + len(valid) == 3000
    assert 0.07 < len(valid) / 3000 < 0.13
    assert {r for r, _ in train}.isdisjoint({r for r, _ in valid})
    assert {r for r, _ in train} | {r for r, _ in valid} == {p.name for p in fsdd.glob("*.wav")}
    for rel, n in train + valid:
        assert n == sf.info(fsdd / rel).frames
    assert [r for r, _ in train] == sorted(r for r, _ in train)
    # Another seed gives another split of the same files.
    out3 = tmp_path / "c"
    w2v("manifest", fsdd, "--dest", out3, "--ext", "wav", "--valid-percent", "0.1", "--seed", "7")
    assert (out3 / "valid.tsv").read_bytes() != (out1 / "valid.tsv").read_bytes()


def test_split_is_stable_when_files_come_and_go(tmp_path, fsdd):
    root = tmp_path / "corpus"
    root.mkdir()
    for f in sorted(fsdd.glob("*_yweweler_*.wav"))[:80]:
        os.symlink(f, root / f.name)
    lib.build_manifest(root, tmp_path / "a", exts=["wav"], valid_percent=0.3, seed=1)
    (root / sorted(os.listdir(root))[0]).unlink()
    lib.build_manifest(root, tmp_path / "b", exts=["wav"], valid_percent=0.3, seed=1)
    _, va = _rows(tmp_path / "a" / "valid.tsv")
    _, vb = _rows(tmp_path / "b" / "valid.tsv")
    assert set(vb) <= set(va) and len(va) - len(vb) <= 1
    # Symlinked files keep their own names (fairseq would resolve them to the store).
    assert all(not r.startswith("..") for r, _ in va)


def _corpus_with_bad_files(tmp_path, fsdd):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    good = sorted(fsdd.glob("5_lucas_4*.wav"))[:6]
    for i, f in enumerate(good):
        shutil.copy(f, (root / "sub" if i % 2 else root) / f.name)
    raw = good[0].read_bytes()
    (root / "truncated.wav").write_bytes(raw[: len(raw) - 1000])
    (root / "empty.wav").write_bytes(b"")
    (root / "notes.wav").write_text("this is a text file, not audio\n")
    x = sf.read(good[1], dtype="float32")[0]
    sf.write(root / "sub" / "sphere.wav", x, 8000, format="NIST", subtype="PCM_16")
    sf.write(root / "stereo24.wav", np.stack([x, x], 1), 8000, subtype="PCM_24")
    sf.write(root / "float.wav", x, 8000, subtype="FLOAT")
    (root / ".hidden.wav").write_bytes(raw)  # skipped, as fairseq's glob skips dot files
    return root, good


def test_bad_files_named_with_reason_good_files_kept(tmp_path, fsdd, w2v):
    """Done-when: truncated, empty and text-named-.wav files are each named; every good file is in."""
    root, good = _corpus_with_bad_files(tmp_path, fsdd)
    proc = w2v("manifest", root, "--dest", tmp_path / "out", "--ext", "wav", "--valid-percent", "0", check=False)
    assert proc.returncode == 3, proc.stderr
    real = os.path.realpath(root)
    assert f"{real}/truncated.wav: truncated WAV" in proc.stderr
    assert f"{real}/empty.wav: empty file" in proc.stderr
    assert f"{real}/notes.wav: not readable audio" in proc.stderr
    assert "3 of 12 inputs left out" in proc.stderr
    _, rows = _rows(tmp_path / "out" / "train.tsv")
    names = {os.path.basename(r) for r, _ in rows}
    assert names == {f.name for f in good} | {"sphere.wav", "stereo24.wav", "float.wav"}
    assert not (tmp_path / "out" / "valid.tsv").exists()
    for rel, n in rows:
        assert n == sf.info(root / rel).frames
    # --dest - prints the same rows as one TSV on stdout, and also says some were left out.
    proc = w2v("manifest", root, "--dest", "-", "--ext", "wav", check=False)
    assert proc.returncode == 3
    assert proc.stdout == (tmp_path / "out" / "train.tsv").read_text()


def test_verify_decodes_every_sample(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    sf.write(root / "ok.flac", np.zeros(16000, np.float32) + 0.1, 16000)
    raw = (root / "ok.flac").read_bytes()
    sf.write(root / "big.flac", np.random.default_rng(0).uniform(-0.5, 0.5, 64000).astype(np.float32), 16000)
    (root / "cut.flac").write_bytes((root / "big.flac").read_bytes()[:6000])
    nan = np.zeros(800, np.float32)
    nan[3] = np.nan
    sf.write(root / "nan.wav", nan, 8000, subtype="FLOAT")
    assert raw  # the good file is readable
    # Headers alone accept the truncated FLAC and the NaN WAV...
    lib.build_manifest(root, tmp_path / "h", exts=["flac", "wav"], valid_percent=0)
    assert len(_rows(tmp_path / "h" / "train.tsv")[1]) == 4
    # ...--verify decodes them and leaves them out, naming each.
    with pytest.raises(PartialFailure) as err:
        lib.build_manifest(root, tmp_path / "v", exts=["flac", "wav"], valid_percent=0, verify=True)
    assert "2 of 4" in str(err.value)
    assert {r for r, _ in _rows(tmp_path / "v" / "train.tsv")[1]} == {"big.flac", "ok.flac"}


def test_path_must_contain_and_multiple_exts(tmp_path, fsdd):
    root = tmp_path / "c"
    (root / "keep").mkdir(parents=True)
    (root / "drop").mkdir()
    f = fsdd / "1_theo_3.wav"
    x = sf.read(f, dtype="float32")[0]
    sf.write(root / "keep" / "a.flac", x, 8000)
    shutil.copy(f, root / "keep" / "b.wav")
    shutil.copy(f, root / "drop" / "c.wav")
    lib.build_manifest(root, tmp_path / "o", exts=["wav", "flac"], valid_percent=0, path_must_contain="keep")
    assert _rows(tmp_path / "o" / "train.tsv")[1] == [("keep/a.flac", len(x)), ("keep/b.wav", len(x))]
    with pytest.raises(W2VError, match="no files ending in .mp3"):
        lib.build_manifest(root, tmp_path / "o", exts=["mp3"])


def _ljspeech_corpus(tmp_path, ljspeech):
    root = tmp_path / "lj"
    shutil.copytree(ljspeech / "wavs", root)
    # A Kaldi `text` built from the metadata's normalized column, one line missing.
    rows = [line.split("|") for line in (ljspeech / "metadata.csv").read_text(encoding="utf-8").splitlines()]
    text = tmp_path / "text"
    text.write_text("".join(f"{r[0]} {r[2]}\n" for r in rows[1:]), encoding="utf-8")
    return root, rows


def test_labels_from_kaldi_text_and_ljspeech_metadata(tmp_path, ljspeech, w2v):
    root, rows = _ljspeech_corpus(tmp_path, ljspeech)
    out = tmp_path / "out"
    # From the full metadata.csv: every row labelled.
    w2v("manifest", root, "--dest", out, "--ext", "flac", "--valid-percent", "0.25", "--labels", ljspeech / "metadata.csv")
    by_id = {r[0]: r[2] for r in rows}
    all_letters = []
    for split in ("train", "valid"):
        man = read_manifest(out / f"{split}.tsv")
        uids = uids_for([it.relpath for it in man.items])
        wrd = labels.read_labels(out / f"{split}.tsv", "wrd")
        ltr = labels.read_labels(out / f"{split}.tsv", "ltr")
        assert wrd == [" ".join(by_id[u].upper().split()) for u in uids]
        assert ltr == [" ".join(list(w.replace(" ", "|"))) + " |" for w in wrd]
        all_letters += ltr if split == "train" else []
    counts = labels.count_symbols(all_letters)
    dict_lines = (out / "dict.ltr.txt").read_text(encoding="utf-8").splitlines()
    assert [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in dict_lines] == labels.dictionary_from_counts(counts)

    # From the Kaldi text lacking the first utterance: it is named and left out of TSV and labels alike.
    out2 = tmp_path / "out2"
    proc = w2v("manifest", root, "--dest", out2, "--ext", "flac", "--valid-percent", "0", "--labels", tmp_path / "text", check=False)
    assert proc.returncode == 3
    assert f"no transcript for utterance '{rows[0][0]}'" in proc.stderr
    man = read_manifest(out2 / "train.tsv")
    assert len(man.items) == len(rows) - 1 == len(labels.read_labels(out2 / "train.tsv", "ltr"))

    # With a LibriSpeech dictionary, punctuation is reported with counts.
    proc = w2v(
        "manifest", out / "train.tsv", "--labels", ljspeech / "metadata.csv", "--dest", tmp_path / "out3",
        "--dict", ljspeech.parent / "emissions" / "dict.ltr.txt",
    )
    assert "characters outside the dictionary" in proc.stderr and "',' x" in proc.stderr
    assert (tmp_path / "out3" / "dict.ltr.txt").read_bytes() == (ljspeech.parent / "emissions" / "dict.ltr.txt").read_bytes()
    assert (tmp_path / "out3" / "train.ltr").read_text() == (out / "train.ltr").read_text()


def test_labels_for_existing_tsv_refuses_missing_transcripts(tmp_path, ljspeech):
    root, rows = _ljspeech_corpus(tmp_path, ljspeech)
    lib.build_manifest(root, tmp_path / "o", valid_percent=0)
    with pytest.raises(W2VError, match="1 rows have no transcript .* nothing was written"):
        lib.label_manifests([tmp_path / "o" / "train.tsv"], transcripts=tmp_path / "text")
    assert not (tmp_path / "o" / "train.wrd").exists()


def test_librispeech_layout_and_speakers(tmp_path, fsdd):
    """LibriSpeech-style tree: speaker-chapter-utt ids, *.trans.txt, default speaker rule."""
    root = tmp_path / "LibriSpeech" / "dev-clean"
    srcs = sorted(fsdd.glob("*_george_3*.wav"))[:6]
    texts = {}
    for i, f in enumerate(srcs):
        spk, chap = ("84", "121123") if i < 3 else ("174", "50561")
        d = root / spk / chap
        d.mkdir(parents=True, exist_ok=True)
        uid = f"{spk}-{chap}-{i:04d}"
        sf.write(d / f"{uid}.flac", sf.read(f, dtype="float32")[0], 8000)
        texts.setdefault(d / f"{spk}-{chap}.trans.txt", []).append(f"{uid} DIGIT {f.stem[0]}\n")
    for path, lines in texts.items():
        path.write_text("".join(lines))
    out = tmp_path / "data"
    kdir = tmp_path / "kaldi"
    lib.build_manifest(root, out, valid_percent=0, name="dev_clean", transcripts=root, to_kaldi=kdir)
    assert labels.read_labels(out / "dev_clean.tsv", "spk") == ["174"] * 3 + ["84"] * 3
    assert labels.read_labels(out / "dev_clean.tsv", "wrd")[0].startswith("DIGIT ")
    assert kaldi.validate_data_dir(kdir) == []
    assert (kdir / "utt2spk").read_text().splitlines()[0] == "174-50561-0003 174"


def test_tsv_to_kaldi_and_back_is_lossless(tmp_path, fsdd, w2v):
    """Done-when: TSV -> Kaldi -> TSV keeps every id, path, length, text and speaker; Kaldi dir validates."""
    root = tmp_path / "fsdd"
    root.mkdir()
    picked = [f for f in sorted(fsdd.glob("*.wav")) if f.stem.endswith(("_7", "_33"))]
    for f in picked:
        os.symlink(f, root / f.name)
    trans = tmp_path / "trans.txt"
    words = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()
    trans.write_text("".join(f"{f.stem} {words[int(f.stem[0])].lower()}\n" for f in picked))
    a = tmp_path / "a"
    w2v("manifest", root, "--dest", a, "--ext", "wav", "--valid-percent", "0.2", "--labels", trans,
        "--speaker-pattern", r"^\d+_(?P<spk>[a-z]+)_")
    for split in ("train", "valid"):
        kdir = tmp_path / f"kaldi_{split}"
        w2v("manifest", a / f"{split}.tsv", "--to-kaldi", kdir)
        assert kaldi.validate_data_dir(kdir) == []
        proc = w2v("manifest", "--validate-kaldi", kdir)
        assert "valid Kaldi data dir" in proc.stderr
        # Speakers prefix the Kaldi ids; texts are the .wrd lines.
        first = (kdir / "text").read_text().splitlines()[0].split(" ", 1)
        spk = (kdir / "utt2spk").read_text().splitlines()[0].split()[1]
        assert first[0].startswith(spk + "-") and first[1] in words
        b = tmp_path / f"b_{split}"
        w2v("manifest", "--from-kaldi", kdir, "--dest", b, "--name", split)
        for ext in ("tsv", "wrd", "ltr", "spk"):
            assert (b / f"{split}.{ext}").read_bytes() == (a / f"{split}.{ext}").read_bytes(), ext
        ua = lib_utts(a / f"{split}.tsv")
        ub = lib_utts(b / f"{split}.tsv")
        assert ua == ub and len(ua) > 0


def lib_utts(tsv):
    from w2vtools.formats.corpus import read_corpus

    return [(u.uid, u.source, u.num_samples, u.text, u.speaker) for u in read_corpus(tsv)]


def test_round_trip_without_speakers_or_text(tmp_path, fsdd):
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    # Colliding stems: ids become relative paths; they survive the trip too.
    shutil.copy(fsdd / "2_theo_9.wav", root / "a" / "x.wav")
    shutil.copy(fsdd / "3_theo_9.wav", root / "b" / "x.wav")
    shutil.copy(fsdd / "4_theo_9.wav", root / "b" / "y.wav")
    lib.build_manifest(root, tmp_path / "t", exts=["wav"], valid_percent=0, to_kaldi=tmp_path / "k")
    assert (tmp_path / "k" / "utt2spk").read_text() == "a/x a/x\nb/x b/x\ny y\n"
    assert kaldi.validate_data_dir(tmp_path / "k", no_text=True) == []
    lib.from_kaldi(tmp_path / "k", tmp_path / "t2", name="train")
    assert (tmp_path / "t2" / "train.tsv").read_bytes() == (tmp_path / "t" / "train.tsv").read_bytes()
    assert not (tmp_path / "t2" / "train.spk").exists() and not (tmp_path / "t2" / "train.wrd").exists()


def test_from_kaldi_segments_and_commands_are_written_as_wav(tmp_path, fsdd):
    long = tmp_path / "long.wav"
    parts = [sf.read(fsdd / f"{d}_nicolas_5.wav", dtype="int16")[0] for d in range(3)]
    sf.write(long, np.concatenate(parts), 8000, subtype="PCM_16")
    d = tmp_path / "kaldi"
    d.mkdir()
    b0, b1 = len(parts[0]) / 8000, (len(parts[0]) + len(parts[1])) / 8000
    (d / "wav.scp").write_text(f"rec1 {long}\nrec2 cat {fsdd / '9_lucas_0.wav'} |\n")
    total = sum(map(len, parts)) / 8000
    (d / "segments").write_text(
        f"lucas-c rec2 0 0.25\nnicolas-a rec1 0 {b0}\nnicolas-b rec1 {b0} {b1}\n"
        f"nicolas-y rec1 {b1} {total + 0.1}\nnicolas-z rec1 {b1} 99\n"
    )
    (d / "utt2spk").write_text(
        "lucas-c lucas\nnicolas-a nicolas\nnicolas-b nicolas\nnicolas-y nicolas\nnicolas-z nicolas\n"
    )
    (d / "text").write_text("lucas-c nine\nnicolas-a zero\nnicolas-b one\nnicolas-y two\nnicolas-z two\n")
    out = tmp_path / "out"
    # A segment far past the end of its recording is named and left out; one 0.1 s past is cut.
    with pytest.raises(PartialFailure, match="1 of 5"):
        lib.from_kaldi(d, out, name="test")
    root, rows = _rows(out / "test.tsv")
    assert root == os.path.abspath(out / "audio")
    got = dict(rows)
    assert list(got) == ["lucas-c.wav", "nicolas-a.wav", "nicolas-b.wav", "nicolas-y.wav"]
    assert got["nicolas-a.wav"] == len(parts[0])
    assert got["nicolas-b.wav"] == len(parts[1])
    assert got["nicolas-y.wav"] == len(parts[2])
    assert got["lucas-c.wav"] == 2000
    np.testing.assert_array_equal(sf.read(out / "audio" / "nicolas-b.wav", dtype="int16")[0], parts[1])
    # The TSV ids are the Kaldi ids, so text and speakers line up.
    assert labels.read_labels(out / "test.tsv", "wrd") == ["NINE", "ZERO", "ONE", "TWO"]
    assert labels.read_labels(out / "test.tsv", "spk") == ["lucas", "nicolas", "nicolas", "nicolas"]


def test_speaker_map_file_and_stale_tsv_lengths(tmp_path, fsdd, w2v):
    root = tmp_path / "r"
    root.mkdir()
    picked = sorted(fsdd.glob("8_*_4.wav"))
    for f in picked:
        os.symlink(f, root / f.name)
    utt2spk = tmp_path / "utt2spk"
    utt2spk.write_text("".join(f"{f.stem} S{f.stem.split('_')[1].upper()}\n" for f in picked))
    w2v("manifest", root, "--dest", tmp_path / "o", "--ext", "wav", "--valid-percent", "0",
        "--utt2spk", utt2spk, "--to-kaldi", tmp_path / "k")
    spk = labels.read_labels(tmp_path / "o" / "train.tsv", "spk")
    assert spk == [f"S{f.stem.split('_')[1].upper()}" for f in picked]
    first = (tmp_path / "k" / "utt2spk").read_text().splitlines()[0]
    assert first == f"{spk[0]}-{picked[0].stem} {spk[0]}"
    durs = kaldi.read_utt2dur(tmp_path / "k" / "utt2dur")
    assert sorted(round(v * 8000) for v in durs.values()) == sorted(sf.info(f).frames for f in picked)
    # Both speaker sources at once is a usage error.
    proc = w2v("manifest", root, "--dest", tmp_path / "o", "--ext", "wav", "--utt2spk", utt2spk,
               "--speaker-pattern", "(x)", check=False)
    assert proc.returncode != 0 and "not both" in proc.stderr
    with pytest.raises(W2VError, match="one TSV at a time"):
        lib.label_manifests([tmp_path / "o" / "train.tsv"] * 2, transcripts=None, to_kaldi=tmp_path / "k2")
    with pytest.raises(W2VError, match="needs a group"):
        lib.SpeakerRule(pattern="abc")


def test_rewriting_a_tsv_removes_its_stale_label_files(tmp_path, ljspeech):
    root, _ = _ljspeech_corpus(tmp_path, ljspeech)
    lib.build_manifest(root, tmp_path / "o", valid_percent=0, transcripts=ljspeech / "metadata.csv")
    assert (tmp_path / "o" / "train.ltr").exists()
    (root / sorted(os.listdir(root))[0]).unlink()
    lib.build_manifest(root, tmp_path / "o", valid_percent=0)
    assert not (tmp_path / "o" / "train.ltr").exists() and not (tmp_path / "o" / "train.wrd").exists()


def test_scan_and_existing_tsv_write_labels_alike(tmp_path):
    """One label writer: a scan with --labels and labelling its TSV afterwards write and report the same files."""
    root = tmp_path / "c"
    root.mkdir()
    for uid in ("a", "b", "c"):
        sf.write(root / f"{uid}.wav", np.zeros(800, np.float32), 8000)
    text = tmp_path / "text"
    text.write_text("a HELLO\nb WORLD\nc HI THERE\n", encoding="utf-8")
    given = tmp_path / "dict.ltr.txt"
    given.write_text("| 9\nE 8\nH 7\nL 6\nO 5\nW 4\nR 3\nD 2\nI 1\nT 1\n", encoding="utf-8")
    scanned = lib.build_manifest(root, tmp_path / "s", exts=["wav"], valid_percent=0, transcripts=text, dictionary=given)
    (tmp_path / "l").mkdir()
    shutil.copy(tmp_path / "s" / "train.tsv", tmp_path / "l" / "train.tsv")
    labelled = lib.label_manifests([tmp_path / "l" / "train.tsv"], transcripts=text, dictionary=given)
    names = lambda report: sorted(os.path.basename(p) for p in report.written if not p.endswith(".tsv"))  # noqa: E731
    assert names(scanned) == names(labelled) == ["dict.ltr.txt", "train.ltr", "train.wrd"]
    for name in ("train.wrd", "train.ltr", "dict.ltr.txt"):
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "l" / name).read_bytes()
