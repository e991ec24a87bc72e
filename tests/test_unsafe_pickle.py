"""A checkpoint whose pickle would run code is refused, and the code never runs."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from w2vtools.errors import W2VError
from w2vtools.models.fairseq import load_fairseq, safe_torch_load

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "fairseq"


class TouchFile:
    """Unpickling this calls os.system("touch <marker>")."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class PopenTouch:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


class EvalTouch:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def _fairseq_like(payload) -> dict:
    """A checkpoint laid out like fairseq's, with the payload hidden in its args Namespace."""
    args = argparse.Namespace(arch="wav2vec", task="audio_pretraining", conv_feature_layers="[(8, 10, 5)]",
                              evil=payload)
    return {"args": args, "model": {"w": torch.zeros(2)}, "extra_state": {}}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_os_system_in_checkpoint_is_refused_and_never_runs(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_fairseq_like(TouchFile(marker)), path, _use_new_zipfile_serialization=zip_format)
    # sanity: the file really would run the command under a plain unpickler
    assert not marker.exists()
    with pytest.raises(W2VError) as err:
        load_fairseq(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "refusing to load" in msg
    assert f"{os.system.__module__}.system" in msg  # posix.system on Linux: the name the pickle uses
    assert "not on the allowlist" in msg
    assert not marker.exists()


def test_the_payload_is_real(tmp_path):
    """The crafted file does run its command with an unrestricted loader (in a child process)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_fairseq_like(TouchFile(marker)), path)
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
    assert marker.exists()


@pytest.mark.parametrize("payload_cls,name", [(PopenTouch, "subprocess.Popen"), (EvalTouch, "builtins.eval")])
def test_other_code_runners_are_refused(tmp_path, payload_cls, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"cfg": {"model": {"_name": "wav2vec2"}}, "model": {}, "x": payload_cls(marker)}, path)
    with pytest.raises(W2VError, match=rf"refusing to load: the pickle references {name}, which is not"):
        safe_torch_load(path)
    assert not marker.exists()


def test_raw_pickle_with_getattr_gadget_is_refused(tmp_path):
    # a hand-written protocol-0 pickle: builtins.getattr(os, "system")("touch ...")
    marker = tmp_path / "pwned"
    payload = (
        b"cbuiltins\ngetattr\n(cos\nsystem\nS'x'\ntR(S'touch " + str(marker).encode() + b"'\ntR."
    )
    path = tmp_path / "raw.pt"
    path.write_bytes(payload)
    with pytest.raises(W2VError, match="refusing to load|not a readable PyTorch checkpoint"):
        safe_torch_load(path)
    assert not marker.exists()


def test_load_model_refuses_too(tmp_path):
    """The generic entry point (our format first, then fairseq) refuses the same file."""
    from w2vtools.models.loading import load_model

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_fairseq_like(TouchFile(marker)), path)
    with pytest.raises(W2VError, match="refusing to load"):
        load_model(path)
    assert not marker.exists()


def test_cli_reports_one_line(tmp_path, w2v):
    """Through the CLI the refusal is a one-line error, exit status 1, marker absent."""
    commands = {p.stem for p in (Path(__file__).resolve().parents[1] / "w2vtools" / "cli").glob("*.py")}
    if "featurize" not in commands:
        pytest.skip("w2v featurize is not available in this checkout")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_fairseq_like(TouchFile(marker)), path)
    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf

    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    (tmp_path / "wav.scp").write_text(f"a {wav}\nb {wav}\n")
    proc = w2v("featurize", str(tmp_path / "wav.scp"), str(tmp_path / "out.h5"), "--model", str(path), check=False)
    assert proc.returncode == 1, proc.stderr
    assert "refusing to load" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_namespace_and_dictconfig_become_plain_python():
    state = safe_torch_load(FIXTURES / "wav2vec_args.pt")
    assert isinstance(state["args"], dict) and state["args"]["arch"] == "wav2vec"
    state = safe_torch_load(FIXTURES / "vq_wav2vec_gumbel_dictconfig_fp16.pt")
    cfg = state["cfg"]
    assert isinstance(cfg, dict) and isinstance(cfg["model"], dict)
    assert cfg["model"]["vq_type"] == "gumbel"
    assert cfg["criterion"]["log_keys"] == ["prob_perplexity", "code_perplexity", "temp"]  # a ListConfig
    assert cfg["model"]["infonce"] == "${criterion.infonce}"  # unresolved, as pickled
    assert state["model"]["feature_extractor.conv_layers.0.0.weight"].dtype == torch.float16
    assert "omegaconf" not in sys.modules and "fairseq" not in sys.modules


def test_numpy_scalars_and_enums_load(tmp_path):
    import enum

    import numpy as np

    class Mode(enum.Enum):  # stands in for fairseq's ChoiceEnum values
        A = "relu"

    Mode.__module__ = "fairseq.dataclass.constants"
    Mode.__qualname__ = "Mode"
    fake = ["fairseq", "fairseq.dataclass", "fairseq.dataclass.constants"]
    assert not any(name in sys.modules for name in fake)
    for name in fake:
        sys.modules[name] = type(sys)(name)
    sys.modules["fairseq.dataclass.constants"].Mode = Mode
    try:
        path = tmp_path / "ok.pt"
        torch.save({"best": np.float64(3.5), "arr": np.arange(3), "mode": Mode.A, "s": {1, 2}}, path)
    finally:
        for name in fake:
            del sys.modules[name]
    state = safe_torch_load(path)
    assert state["best"] == 3.5
    assert list(state["arr"]) == [0, 1, 2]
    assert state["mode"] == "relu"
    assert state["s"] == {1, 2}


def test_unreadable_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(W2VError, match="not a readable PyTorch checkpoint"):
        safe_torch_load(bad)
    with pytest.raises(W2VError, match="no such file"):
        safe_torch_load(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"x": 1}, plain)
    with pytest.raises(W2VError, match="not a fairseq checkpoint"):
        load_fairseq(plain)
