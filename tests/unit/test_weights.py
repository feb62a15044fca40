"""Tests for animzoo.weights: registry, resolution order, checksums, real local downloads, loading."""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib
import sys
import threading

import pytest
import torch

from animzoo import weights as W
from animzoo.errors import AnimzooInputError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Private registry, hash cache, weights dir and torch hub dir; downloads not allowed."""
    monkeypatch.setattr(W, "_REGISTRY", dict(W._REGISTRY))
    monkeypatch.setattr(W, "_HASHED", {})
    env_dir = tmp_path / "env_weights"
    env_dir.mkdir()
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(env_dir))
    monkeypatch.delenv(W.ALLOW_DOWNLOAD_ENV, raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    previous_hub = torch.hub.get_dir()
    hub = tmp_path / "hub"
    torch.hub.set_dir(str(hub))
    yield type("Dirs", (), {"env": env_dir, "hub": hub, "checkpoints": hub / "checkpoints"})
    torch.hub.set_dir(previous_hub)


DATA = b"animzoo test weights \x00\x01\x02" * 1000


def _spec(name="toy", filename="toy.bin", data=DATA, **kw) -> W.WeightSpec:
    kw.setdefault("sha256", _sha(data))
    return W.register_weight(W.WeightSpec(name=name, filename=filename, description="a toy file", **kw))


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package folder on sys.path holding the toy file; importing it would fail."""
    root = tmp_path / "site"
    pkg = root / "animzoo_fake_weights_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the resolver must not import this package')\n")
    (pkg / "data" / "toy.bin").write_bytes(DATA)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield pkg
    sys.modules.pop("animzoo_fake_weights_pkg", None)


# ---------------------------------------------------------------------------------- registry


def test_vgg19_is_registered_consistently():
    spec = W.get_weight_spec("vgg19")
    assert spec.filename == "vgg19-dcbb9e9d.pth"
    assert spec.sha256_prefix == "dcbb9e9d"
    assert spec.sha256 is None or (len(spec.sha256) == 64 and spec.sha256.startswith("dcbb9e9d"))
    assert spec.urls and spec.urls[0].endswith("/" + spec.filename)
    assert "torchvision" in spec.licence


def test_unknown_name_lists_registered_names():
    _spec()
    with pytest.raises(KeyError) as info:
        W.get_weight_spec("nope")
    assert isinstance(info.value, AnimzooInputError)
    assert "nope" in str(info.value) and "toy" in str(info.value) and "vgg19" in str(info.value)


def test_duplicate_registration_and_spec_validation():
    _spec()
    _spec()  # the same spec again is fine
    with pytest.raises(ValueError, match="already registered"):
        _spec(filename="other.bin")
    W.register_weight(W.WeightSpec(name="toy", filename="other.bin", sha256=_sha(b"x")), overwrite=True)
    assert W.get_weight_spec("toy").filename == "other.bin"
    with pytest.raises(ValueError, match="64 hex"):
        W.WeightSpec(name="a", filename="a.bin", sha256="abc")
    with pytest.raises(ValueError, match="sha256"):
        W.WeightSpec(name="a", filename="a.bin")
    with pytest.raises(ValueError, match="does not match"):
        W.WeightSpec(name="a", filename="a.bin", sha256=_sha(b"x"), sha256_prefix="00000000")
    with pytest.raises(ValueError, match="bare file name"):
        W.WeightSpec(name="a", filename="dir/a.bin", sha256=_sha(b"x"))
    assert W.WeightSpec(name="a", filename="a.bin", sha256=_sha(b"x").upper()).sha256_prefix == _sha(b"x")[:8]
    assert [s.name for s in W.list_weights()] == sorted(s.name for s in W.list_weights())


# ---------------------------------------------------------------------------------- resolution


def test_resolution_order(tmp_path, isolated, fake_package):
    _spec(package="animzoo_fake_weights_pkg", package_path="data/toy.bin")
    explicit = tmp_path / "mine.bin"
    explicit.write_bytes(b"the user's own file, not hash-checked")
    env_file = isolated.env / "toy.bin"
    hub_file = isolated.checkpoints / "toy.bin"
    isolated.checkpoints.mkdir(parents=True)
    env_file.write_bytes(DATA)
    hub_file.write_bytes(DATA)
    pkg_file = fake_package / "data" / "toy.bin"

    assert W.resolve_weight("toy", explicit) == explicit
    assert W.resolve_weight("toy", str(explicit)) == explicit
    assert W.resolve_weight("toy") == env_file
    env_file.unlink()
    assert W.resolve_weight("toy") == hub_file
    hub_file.unlink()
    assert W.resolve_weight("toy") == pkg_file
    assert "animzoo_fake_weights_pkg" not in sys.modules  # found without importing it
    pkg_file.unlink()
    with pytest.raises(W.WeightsNotFoundError):
        W.resolve_weight("toy")


def test_search_locations_lists_every_place(isolated, fake_package):
    _spec(package="animzoo_fake_weights_pkg", package_path="data/toy.bin")
    places = [p for _, p in W.search_locations("toy")]
    assert places == [
        isolated.env / "toy.bin",
        isolated.checkpoints / "toy.bin",
        fake_package / "data" / "toy.bin",
    ]


def test_dotted_package_reads_folders_without_import(isolated, fake_package):
    _spec(package="animzoo_fake_weights_pkg.data")  # package_path defaults to the file name
    assert W.resolve_weight("toy") == fake_package / "data" / "toy.bin"
    assert "animzoo_fake_weights_pkg" not in sys.modules


def test_missing_package_is_not_an_error_until_nothing_is_found(isolated):
    _spec(package="animzoo_no_such_package_xyz")
    with pytest.raises(W.WeightsNotFoundError) as info:
        W.resolve_weight("toy")
    assert "pip install animzoo_no_such_package_xyz" in str(info.value)


def test_default_weights_dir_without_env(monkeypatch, tmp_path):
    monkeypatch.delenv(W.WEIGHTS_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.weights_dir() == tmp_path / "xdg" / "animzoo" / "weights"


def test_missing_explicit_path_is_an_error_naming_it(tmp_path, isolated):
    _spec()
    (isolated.env / "toy.bin").write_bytes(DATA)  # present elsewhere, but the caller asked for this path
    missing = tmp_path / "missing.bin"
    with pytest.raises(W.WeightsNotFoundError, match="missing.bin"):
        W.resolve_weight("toy", missing)


def test_not_found_message_names_file_places_and_fix(isolated):
    _spec(urls=("http://127.0.0.1:9/toy.bin",))
    with pytest.raises(W.WeightsNotFoundError) as info:
        W.resolve_weight("toy")
    message = str(info.value)
    assert isinstance(info.value, AnimzooInputError)
    assert "toy.bin" in message
    assert str(isolated.env / "toy.bin") in message and str(isolated.checkpoints / "toy.bin") in message
    assert "animzoo weights download toy" in message and "ANIMZOO_ALLOW_DOWNLOAD=1" in message


# ---------------------------------------------------------------------------------- checksums


def test_checksum_mismatch_names_file_and_both_hashes_and_keeps_the_file(isolated):
    _spec()
    bad = isolated.env / "toy.bin"
    bad.write_bytes(b"not the right bytes")
    with pytest.raises(W.WeightsChecksumError) as info:
        W.resolve_weight("toy")
    message = str(info.value)
    assert str(bad) in message and _sha(DATA) in message and _sha(b"not the right bytes") in message
    assert bad.read_bytes() == b"not the right bytes"  # nothing already in place is lost


def test_prefix_check_like_torch_hub(isolated):
    prefix = _sha(DATA)[:8]
    W.register_weight(W.WeightSpec(name="hubby", filename=f"hubby-{prefix}.pth", sha256_prefix=prefix))
    good = isolated.env / f"hubby-{prefix}.pth"
    good.write_bytes(DATA)
    assert W.resolve_weight("hubby") == good
    W._HASHED.clear()
    good.write_bytes(DATA + b"!")
    with pytest.raises(W.WeightsChecksumError) as info:
        W.resolve_weight("hubby")
    assert f"sha256 prefix {prefix}" in str(info.value) and _sha(DATA + b"!") in str(info.value)


def test_verified_files_are_hashed_once_until_they_change(isolated, monkeypatch):
    _spec()
    path = isolated.env / "toy.bin"
    path.write_bytes(DATA)
    calls = []
    real = W.sha256_of
    monkeypatch.setattr(W, "sha256_of", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        W.resolve_weight("toy")
    assert len(calls) == 1
    path.write_bytes(b"changed")  # new size and mtime: hashed again, and rejected
    with pytest.raises(W.WeightsChecksumError):
        W.resolve_weight("toy")
    assert len(calls) == 2


def test_sha256_of_matches_hashlib(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(DATA * 300)  # several 1 MiB chunks
    assert W.sha256_of(f) == _sha(DATA * 300)


# ---------------------------------------------------------------------------------- downloads


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a temp folder; yields (folder, base url)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_download_refused_unless_allowed(isolated, http_server, monkeypatch):
    served, base = http_server
    (served / "toy.bin").write_bytes(DATA)
    _spec(urls=(f"{base}/toy.bin",))
    with pytest.raises(W.WeightsNotFoundError) as info:
        W.resolve_weight("toy")
    assert "ANIMZOO_ALLOW_DOWNLOAD=1" in str(info.value) and "animzoo weights download toy" in str(info.value)
    monkeypatch.setenv(W.ALLOW_DOWNLOAD_ENV, "1")
    with pytest.raises(W.WeightsNotFoundError):
        W.resolve_weight("toy", allow_download=False)  # the argument wins over the variable
    assert not isolated.checkpoints.exists() or not any(isolated.checkpoints.iterdir())


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_download_with_correct_sha256_lands_in_hub_cache(isolated, http_server, monkeypatch, how):
    served, base = http_server
    payload = DATA * 100  # 2.3 MB: streamed in several 1 MiB chunks
    (served / "toy.bin").write_bytes(payload)
    _spec(data=payload, urls=(f"{base}/toy.bin",), size=len(payload))
    if how == "environment":
        monkeypatch.setenv(W.ALLOW_DOWNLOAD_ENV, "1")
        path = W.resolve_weight("toy", progress=False)
    else:
        path = W.resolve_weight("toy", allow_download=True, progress=False)
    assert path == isolated.checkpoints / "toy.bin"
    assert path.read_bytes() == payload
    assert sorted(p.name for p in isolated.checkpoints.iterdir()) == ["toy.bin"]  # no temp file left
    # Next time it is found in the cache without the server.
    (served / "toy.bin").unlink()
    assert W.resolve_weight("toy", allow_download=False) == path


def test_download_with_wrong_sha256_fails_and_leaves_nothing(isolated, http_server):
    served, base = http_server
    (served / "toy.bin").write_bytes(b"tampered bytes")
    _spec(urls=(f"{base}/toy.bin",))
    with pytest.raises(W.WeightsChecksumError) as info:
        W.resolve_weight("toy", allow_download=True, progress=False)
    message = str(info.value)
    assert _sha(DATA) in message and _sha(b"tampered bytes") in message and "toy.bin" in message
    assert not isolated.checkpoints.exists() or list(isolated.checkpoints.iterdir()) == []


def test_failed_download_keeps_the_file_already_in_place(tmp_path, http_server):
    served, base = http_server
    (served / "toy.bin").write_bytes(b"tampered bytes")
    _spec(urls=(f"{base}/toy.bin",))
    folder = tmp_path / "dest"
    folder.mkdir()
    (folder / "toy.bin").write_bytes(b"precious")
    with pytest.raises(W.WeightsChecksumError):
        W.download_weight("toy", destination=folder, progress=False)
    assert (folder / "toy.bin").read_bytes() == b"precious"
    assert sorted(p.name for p in folder.iterdir()) == ["toy.bin"]


def test_download_falls_back_to_the_next_url_and_reports_all_failures(isolated, http_server):
    served, base = http_server
    _spec(urls=(f"{base}/missing.bin", f"{base}/toy.bin"))
    with pytest.raises(W.WeightsDownloadError) as info:
        W.resolve_weight("toy", allow_download=True, progress=False)
    assert f"{base}/missing.bin" in str(info.value) and f"{base}/toy.bin" in str(info.value)
    assert "404" in str(info.value)
    (served / "toy.bin").write_bytes(DATA)
    assert W.resolve_weight("toy", allow_download=True, progress=False).read_bytes() == DATA


def test_spec_without_urls_cannot_download(isolated):
    _spec()
    with pytest.raises(W.WeightsDownloadError, match="no download url"):
        W.resolve_weight("toy", allow_download=True)


# ---------------------------------------------------------------------------------- loading


def test_load_state_dict_file_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(2, dtype=torch.int64)}
    torch.save(state, tmp_path / "s.pth")
    save_file(state, str(tmp_path / "s.safetensors"))
    for name in ("s.pth", "s.safetensors"):
        loaded = W.load_state_dict_file(tmp_path / name)
        assert (
            set(loaded) == {"a", "b"} and torch.equal(loaded["a"], state["a"]) and torch.equal(loaded["b"], state["b"])
        )


class _NotAllowed:
    pass


def test_load_state_dict_file_refuses_pickled_objects_and_garbage(tmp_path):
    torch.save({"obj": _NotAllowed()}, tmp_path / "evil.pth")
    with pytest.raises(W.WeightsError, match="evil.pth"):
        W.load_state_dict_file(tmp_path / "evil.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(W.WeightsError, match="junk.safetensors"):
        W.load_state_dict_file(tmp_path / "junk.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(W.WeightsError, match="not a state dict"):
        W.load_state_dict_file(tmp_path / "list.pt")
    with pytest.raises(W.WeightsNotFoundError):
        W.load_state_dict_file(tmp_path / "absent.pth")
