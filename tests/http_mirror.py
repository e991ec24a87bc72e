"""A local HTTP mirror for the recipes' download stages (the tests run offline).

:func:`serve` serves a folder on 127.0.0.1 in a background thread, the way a
corpus mirror does, and records each request's path and ``Range`` header. With
``ranges=True`` it answers ``Range: bytes=N-`` with 206 Partial Content, as
openslr and GitHub do; with ``ranges=False`` it always sends the whole file, as
Python's own http.server does.

Example:
    >>> with serve(tmp_path) as mirror:                      # doctest: +SKIP
    ...     urllib.request.urlopen(mirror.url + "/a.txt").read()
"""

from __future__ import annotations

import contextlib
import http.server
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Mirror:
    url: str
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


@contextlib.contextmanager
def serve(root: Path, ranges: bool = True):
    mirror = Mirror(url="")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # keep the test output clean
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            mirror.requests.append((self.path, rng))
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            path = Path(self.translate_path(self.path))
            if not (ranges and m and path.is_file()):
                return super().do_GET()
            data = path.read_bytes()
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()
