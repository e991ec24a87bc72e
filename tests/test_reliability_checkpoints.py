"""Issue 15, malformed foreign checkpoints: every failure to read one is one line naming the file and the field.

Hugging Face folders (config.json with bad JSON, a wrong kind of value, lists that
disagree; truncated or mis-shaped model.safetensors and pytorch_model.bin) and
fairseq ``.pt`` files (missing keys, ill-typed fields, non-tensor weights). Also:
an exported ``model.safetensors`` gets the umask's mode like any output.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from reliability_helpers import tiny_wav2vec2
from w2vtools.errors import W2VError
from w2vtools.models.checkpoint import LoadedModel
from w2vtools.models.fairseq import safe_torch_load
from w2vtools.models.huggingface import export_huggingface
from w2vtools.models.loading import load_model
from w2vtools.models.presets import get_preset
from w2vtools.models.wav2vec2 import Wav2Vec2Model

FAIRSEQ = Path(__file__).resolve().parent / "fixtures" / "fairseq" / "wav2vec2_base_cfg.pt"


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = Wav2Vec2Model(get_preset("wav2vec2", "tiny")).eval()
    folder = tmp_path_factory.mktemp("hf") / "tiny"
    export_huggingface(LoadedModel("wav2vec2", "pretrain", model, model.cfg), folder)
    return folder


def _copy(hf_folder: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(hf_folder, folder)
    return folder


def _refused(spec: Path, *names: str) -> str:
    """Loading ``spec`` fails with one line that holds every one of ``names``."""
    with pytest.raises(W2VError) as info:
        load_model(spec)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for name in names:
        assert name in msg, msg
    return msg


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    hf = json.loads(path.read_text())
    hf.update(changes)
    path.write_text(json.dumps(hf))


def test_the_exported_folder_loads(hf_folder):
    assert load_model(hf_folder).source == "huggingface"


def test_config_json_not_json(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    (folder / "config.json").write_text('{"hidden_size": 64,')
    _refused(folder, str(folder / "config.json"), "not readable JSON")


def test_config_json_not_an_object(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    (folder / "config.json").write_text("[1, 2]")
    _refused(folder, str(folder / "config.json"), "expected a JSON object")


@pytest.mark.parametrize("field, value, expected", [
    ("hidden_size", "768", "a whole number"),
    ("num_hidden_layers", 2.5, "a whole number"),
    ("num_attention_heads", None, "a whole number"),
    ("hidden_dropout", "0.1", "a number"),
    ("feat_extract_norm", 1, "a string"),
    ("conv_kernel", [10, "3"], "a list of positive whole numbers"),
    ("architectures", "Wav2Vec2Model", "a list of class names"),
])
def test_config_json_ill_typed_field(hf_folder, tmp_path, field, value, expected):
    folder = _copy(hf_folder, tmp_path)
    _edit_config(folder, **{field: value})
    _refused(folder, str(folder / "config.json"), f"field {field}", expected)


def test_config_json_conv_lists_disagree(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    hf = json.loads((folder / "config.json").read_text())
    _edit_config(folder, conv_stride=hf["conv_stride"][:-1])
    _refused(folder, str(folder / "config.json"), "conv_dim, conv_kernel, conv_stride")


def test_config_json_unbuildable(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    hf = json.loads((folder / "config.json").read_text())
    _edit_config(folder, num_attention_heads=hf["hidden_size"] + 1)  # heads that do not divide the width
    _refused(folder, str(folder / "config.json"))


def test_config_json_missing_field_then_weights_do_not_fit(hf_folder, tmp_path):
    # a missing field takes transformers' default (hidden_size 768): the weights then name the mismatch
    folder = _copy(hf_folder, tmp_path)
    hf = json.loads((folder / "config.json").read_text())
    del hf["hidden_size"], hf["intermediate_size"], hf["num_attention_heads"]
    (folder / "config.json").write_text(json.dumps(hf))
    _refused(folder, str(folder / "model.safetensors"), "has shape", "config.json describes")


def test_truncated_safetensors(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    st = folder / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    _refused(folder, str(st), "not readable safetensors")


def test_safetensors_garbage_header(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    _refused(folder, str(folder / "model.safetensors"), "not readable safetensors")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_mis_shaped_safetensors(hf_folder, tmp_path):
    from safetensors.torch import save_file

    folder = _copy(hf_folder, tmp_path)
    state = _weights(folder)
    key = next(k for k in state if k.endswith("layers.0.attention.k_proj.weight"))
    state[key] = state[key][:, :-1].contiguous()
    save_file(state, str(folder / "model.safetensors"))
    _refused(folder, str(folder / "model.safetensors"), "layers.0.attention.k_proj.weight", "has shape")


def test_truncated_pytorch_model_bin(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    state = _weights(folder)
    (folder / "model.safetensors").unlink()
    binf = folder / "pytorch_model.bin"
    torch.save(state, binf)
    binf.write_bytes(binf.read_bytes()[: binf.stat().st_size // 2])
    _refused(folder, str(binf), "cannot read weights")


def test_mis_shaped_pytorch_model_bin(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    state = _weights(folder)
    (folder / "model.safetensors").unlink()
    key = next(k for k in state if k.endswith("encoder.layer_norm.weight"))
    state[key] = torch.ones(3)
    torch.save(state, folder / "pytorch_model.bin")
    _refused(folder, str(folder / "pytorch_model.bin"), "encoder.layer_norm.weight", "has shape")


def test_pytorch_model_bin_not_a_state_dict(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save([1, 2, 3], folder / "pytorch_model.bin")
    _refused(folder, str(folder / "pytorch_model.bin"), "not a state dict")


def test_cli_names_the_file_in_one_line(hf_folder, tmp_path, w2v):
    folder = _copy(hf_folder, tmp_path)
    _edit_config(folder, hidden_size="768")
    proc = w2v("checkpoint", "inspect", folder, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "config.json: field hidden_size" in lines[0] and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- fairseq


def _fairseq(tmp_path: Path, edit) -> Path:
    state = safe_torch_load(FAIRSEQ)
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    return path


def test_fairseq_fixture_loads():
    assert load_model(FAIRSEQ).source == "fairseq"


def test_fairseq_missing_model_state(tmp_path):
    path = _fairseq(tmp_path, lambda s: s.pop("model"))
    _refused(path, str(path), "'model'")


def test_fairseq_missing_cfg_and_args(tmp_path):
    path = _fairseq(tmp_path, lambda s: (s.pop("cfg"), s.pop("args")))
    _refused(path, str(path), "'args' or 'cfg'")


def test_fairseq_missing_arch(tmp_path):
    path = _fairseq(tmp_path, lambda s: s["cfg"]["model"].pop("_name"))
    _refused(path, str(path), "architecture")


def test_fairseq_missing_weight(tmp_path):
    path = _fairseq(tmp_path, lambda s: s["model"].pop("encoder.layer_norm.weight"))
    _refused(path, str(path), "missing", "encoder.layer_norm.weight")


def test_fairseq_ill_typed_field(tmp_path):
    path = _fairseq(tmp_path, lambda s: s["cfg"]["model"].update(encoder_layers="twelve"))
    _refused(path, str(path), "twelve")


def test_fairseq_weight_not_a_tensor(tmp_path):
    path = _fairseq(tmp_path, lambda s: s["model"].update({"encoder.layer_norm.weight": [1.0, 2.0]}))
    _refused(path, str(path), "encoder.layer_norm.weight", "not tensors")


# --------------------------------------------------------------------------- export mode


def test_exported_files_get_the_umask_mode(tmp_path, w2v):
    ckpt = tiny_wav2vec2(tmp_path / "tiny.pt")
    out = tmp_path / "hf"
    old = os.umask(0o022)
    try:
        w2v("checkpoint", "convert", ckpt, out, "--to", "huggingface")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "config.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert load_model(out).source == "huggingface"
