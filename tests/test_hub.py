"""Named models: fetched once from a (local) HTTP server into $W2V_HOME, clear errors offline."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from w2vtools.errors import W2VError
from w2vtools.models import hub


@pytest.fixture
def server(tmp_path):
    """A local HTTP server serving tmp_path/srv, counting GET requests."""
    root = tmp_path / "srv"
    root.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def test_official_addresses():
    assert hub.MODELS["wav2vec2-base"].url == "https://dl.fbaipublicfiles.com/fairseq/wav2vec/wav2vec_small.pt"
    assert hub.MODELS["wav2vec2-large-lv60"].url.endswith("/wav2vec_vox_new.pt")
    assert hub.MODELS["xlsr-53"].url.endswith("/xlsr_53_56k.pt")
    assert hub.MODELS["vq-wav2vec"].url.endswith("/vq-wav2vec.pt")
    assert hub.MODELS["wav2vec-large"].url.endswith("/wav2vec_large.pt")
    assert hub.resolve("fbank") == "fbank"
    assert hub.resolve("some/path.pt") == "some/path.pt"


def test_download_once_into_w2v_home(tmp_path, server, monkeypatch):
    root, url, hits = server
    payload = bytes(range(256)) * 5000
    (root / "wav2vec_small.pt").write_bytes(payload)
    monkeypatch.setenv("W2V_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("W2V_HUB_MIRROR", url)
    path = hub.resolve("wav2vec2-base")
    assert path == str(tmp_path / "home" / "models" / "wav2vec_small.pt")
    assert open(path, "rb").read() == payload
    assert hits == ["/wav2vec_small.pt"]
    assert hub.resolve("wav2vec2-base") == path
    assert len(hits) == 1, "a cached model is not fetched again"
    assert [p.name for p in (tmp_path / "home" / "models").iterdir()] == ["wav2vec_small.pt"]


def test_missing_on_server_leaves_nothing_and_says_where(tmp_path, server, monkeypatch):
    _, url, _ = server
    monkeypatch.setenv("W2V_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("W2V_HUB_MIRROR", url)
    with pytest.raises(W2VError) as e:
        hub.resolve("xlsr-53")
    msg = str(e.value)
    assert "https://dl.fbaipublicfiles.com/fairseq/wav2vec/xlsr_53_56k.pt" in msg
    assert str(tmp_path / "home" / "models" / "xlsr_53_56k.pt") in msg
    assert list((tmp_path / "home" / "models").iterdir()) == []


def test_no_network_error_names_file_and_place(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("W2V_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("W2V_HUB_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(W2VError, match=r"cannot download model 'vq-wav2vec'.*put it at .*vq-wav2vec\.pt"):
        hub.resolve("vq-wav2vec", timeout=5)


def test_cli_featurize_names_the_download(tmp_path, w2v, fsdd):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scp = tmp_path / "wav.scp"
    scp.write_text(f"a {fsdd / '0_jackson_0.wav'}\nb {fsdd / '1_jackson_0.wav'}\n")
    p = w2v("featurize", scp, tmp_path / "o.h5", "--model", "wav2vec2-base", check=False,
            env={"W2V_HOME": str(tmp_path / "h"), "W2V_HUB_MIRROR": f"http://127.0.0.1:{port}"})
    assert p.returncode == 1
    assert "wav2vec_small.pt" in p.stderr and str(tmp_path / "h" / "models") in p.stderr
