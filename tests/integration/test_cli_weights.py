"""`animzoo weights list|download|verify` with a real download from a loopback HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from animzoo import weights
from animzoo.cli import main

PAYLOAD = b"animzoo test weights\n" * 1000


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "tiny.bin").write_bytes(PAYLOAD)
    handler = lambda *a, **k: _Quiet(*a, directory=str(site), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    spec = weights.WeightSpec(
        name="tiny-test", filename="tiny.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        urls=(f"http://127.0.0.1:{server.server_address[1]}/tiny.bin",), licence="CC0",
        description="a test file",
    )
    monkeypatch.setitem(weights._REGISTRY, spec.name, spec)
    monkeypatch.setenv("ANIMZOO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield spec
    server.shutdown()


def test_list_download_verify(served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "vgg19" in listing and "tiny-test" in listing and "missing" in listing

    assert main(["weights", "verify", "tiny-test"]) == 1  # asked for, not present
    target = tmp_path / "weights"
    assert main(["weights", "download", "tiny-test", "--dir", str(target)]) == 0
    assert (target / "tiny.bin").read_bytes() == PAYLOAD
    assert main(["weights", "verify", "tiny-test"]) == 0

    (target / "tiny.bin").write_bytes(PAYLOAD[:-1] + b"!")  # damaged copy
    capsys.readouterr()
    assert main(["weights", "verify", "tiny-test"]) == 1
    assert "tiny.bin" in capsys.readouterr().out


def test_download_with_a_wrong_checksum_is_refused_and_leaves_nothing(
    served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = weights.WeightSpec(
        name="tiny-bad", filename="tiny.bin", sha256="0" * 64, urls=served.urls, licence="CC0",
    )
    monkeypatch.setitem(weights._REGISTRY, bad.name, bad)
    target = tmp_path / "dl"
    assert main(["weights", "download", "tiny-bad", "--dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert "tiny.bin" in err and "0" * 64 in err
    assert not target.exists() or not any(target.iterdir())
