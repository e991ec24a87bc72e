"""``w2v manifest --fix-kaldi``: Kaldi's fix_data_dir.sh, and --validate-kaldi's hints."""

from __future__ import annotations

import shutil

from w2vtools.formats import kaldi, kaldi_fix
from w2vtools.formats.utterance import Utterance


def _broken_dir(tmp_path, fsdd):
    """A valid FSDD data dir, then: spk2utt removed, text unsorted, one recording's file deleted."""
    audio = tmp_path / "audio"
    audio.mkdir()
    utts = []
    for f in sorted(fsdd.glob("[0-2]_jackson_0.wav")) + sorted(fsdd.glob("[0-2]_theo_0.wav")):
        shutil.copy(f, audio / f.name)
        spk = f.stem.split("_")[1]
        utts.append(Utterance(kaldi.kaldi_uid(f.stem, spk), str(audio / f.name), speaker=spk, text=f"D{f.stem[0]}"))
    d = tmp_path / "data"
    kaldi.write_data_dir(d, utts, durations={u.uid: 0.5 for u in utts})
    assert kaldi.validate_data_dir(d) == []
    (d / "spk2utt").unlink()
    (d / "text").write_text("".join(reversed((d / "text").read_text().splitlines(keepends=True))))
    (audio / "1_theo_0.wav").unlink()
    (d / "wav.scp").write_text((d / "wav.scp").read_text() + "zed-cmd sox x.wav -t wav - |\n")  # only in wav.scp
    return d


def test_fix_kaldi_repairs_and_the_dir_validates(tmp_path, fsdd, w2v):
    d = _broken_dir(tmp_path, fsdd)
    original_text = (d / "text").read_text()

    proc = w2v("manifest", "--validate-kaldi", d, check=False)
    assert proc.returncode == 1
    assert f"no such file spk2utt; run: w2v manifest --fix-kaldi {d}" in proc.stderr

    proc = w2v("manifest", "--fix-kaldi", d)
    err = proc.stderr
    assert "made spk2utt from utt2spk" in err
    assert "sorted text (LC_ALL=C)" in err
    assert "dropped 1 utterance: audio file missing (e.g. 'theo-1_theo_0')" in err
    assert "dropped 1 utterance: not in utt2spk (e.g. 'zed-cmd')" in err
    assert "kept 5 of 7 utterances" in err

    assert (d / ".backup" / "text").read_text() == original_text
    assert not (d / ".backup" / "spk2utt").exists()
    assert kaldi.validate_data_dir(d) == []
    w2v("manifest", "--validate-kaldi", d)
    assert (d / "spk2utt").read_text() == (
        "jackson jackson-0_jackson_0 jackson-1_jackson_0 jackson-2_jackson_0\ntheo theo-0_theo_0 theo-2_theo_0\n"
    )
    keys = [line.split()[0] for line in (d / "utt2dur").read_text().splitlines()]
    assert keys == kaldi.c_sorted(keys) and "theo-1_theo_0" not in keys

    # A second run finds nothing to do.
    err = w2v("manifest", "--fix-kaldi", d).stderr
    assert "dropped" not in err and "sorted" not in err and "kept 5 of 5" in err


def test_fix_keeps_commands_and_segments(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text("r2 /no/such.wav\nr1 sox a.sph -t wav - |\n")
    (d / "segments").write_text("u2 r2 0 1\nu1 r1 0 1\nu3 r1 1 2\n")
    (d / "utt2spk").write_text("u1 u1\nu2 u2\nu3 u3\n")
    report = kaldi_fix.fix_data_dir(d)
    assert report.kept == 2 and dict(report.dropped) == {"audio file missing": 1}
    assert (d / "wav.scp").read_text() == "r1 sox a.sph -t wav - |\n"
    assert (d / "segments").read_text() == "u1 r1 0 1\nu3 r1 1 2\n"
    assert kaldi.validate_data_dir(d, no_text=True) == []


def test_hints():
    assert kaldi_fix.fix_hint("wav.scp: not in sorted order (LC_ALL=C sort)", "D") == "run: w2v manifest --fix-kaldi D"
    assert "--no-text" in kaldi_fix.fix_hint("no such file text (if this is by design, use no_text)", "D")
    assert kaldi_fix.fix_hint("text:3: contains CR (0x0D)", "D").startswith("edit")
