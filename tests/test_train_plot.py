"""``w2v plot``: curves from a training log to PNG."""

from __future__ import annotations

import json

def _log(path, slope):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for u in range(10, 110, 10):
        lines.append({"kind": "train", "update": u, "loss": 6 - slope * u, "accuracy": u / 200, "lr": 1e-3})
        if u % 50 == 0:
            lines.append({"kind": "valid", "update": u, "loss": 6.2 - slope * u, "accuracy": u / 220})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_plot_writes_png_of_present_metrics(tmp_path, w2v):
    a = _log(tmp_path / "a" / "log.jsonl", 0.01)
    b = _log(tmp_path / "b" / "log.jsonl", 0.02)
    out = tmp_path / "curves.png"
    proc = w2v("plot", a, b, "-o", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "loss, accuracy, lr" in proc.stderr
    from PIL import Image

    assert Image.open(out).size[0] >= 1000  # three panels side by side


def test_plot_errors_name_the_problem(tmp_path, w2v):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"update": 1, "loss": 2}\nnot json\n')
    proc = w2v("plot", bad, "-o", tmp_path / "x.png", check=False)
    assert proc.returncode == 1 and "bad.jsonl:2: not a JSON line" in proc.stderr
    good = _log(tmp_path / "log.jsonl", 0.01)
    proc = w2v("plot", good, "-o", tmp_path / "x.png", "--metric", "wer", check=False)
    assert proc.returncode == 1 and "'wer' is in none of the logs" in proc.stderr
    assert not (tmp_path / "x.png").exists()
