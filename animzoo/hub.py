"""Pretrained models: save / load a method as safetensors weights plus a JSON config.

A *pretrained folder* holds two files and nothing executable:

* ``model.safetensors``: the module's state dict (the discriminator is left out unless asked
  for; loss networks such as the VGG19 of the perceptual loss are always left out),
* ``config.json``: ``{"method": <registry name>, "class_path", "init_args": <the constructor
  arguments that are plain JSON data>, "animzoo_version", "requires", "image_size", "data",
  "recipe", "metrics", "includes_discriminator"}``.

Optimiser and scheduler callables are training state, not model state: they are not written, and
a loaded module gets the defaults. Nothing here unpickles anything (except
:func:`from_checkpoint`, which reads a Lightning ``.ckpt`` you trained yourself).

Named models (:data:`PRETRAINED`) ship inside the package (``animzoo/pretrained/<folder>``) or
are fetched from a url; the sha256 of each ``model.safetensors`` is data kept next to the files,
in ``animzoo/pretrained/index.json``, which ``python -m animzoo.hub index`` regenerates.
:func:`load_pretrained` refuses weights whose sha256 differs from the index.

    import animzoo
    model = animzoo.load_pretrained("monkeynet.synthetic64")   # eval mode, on the CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import pickle
import sys
import urllib.request
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from animzoo import __version__
from animzoo.errors import AnimzooInputError
from animzoo.io import atomic_write
from animzoo.weights import download_allowed, sha256_of

__all__ = [
    "CONFIG_NAME",
    "INDEX_PATH",
    "PRETRAINED",
    "PRETRAINED_DIR",
    "WEIGHTS_NAME",
    "PretrainedChecksumError",
    "PretrainedEntry",
    "PretrainedError",
    "PretrainedMismatchError",
    "PretrainedNotFoundError",
    "from_checkpoint",
    "from_pretrained",
    "get_pretrained_entry",
    "list_pretrained",
    "load_pretrained",
    "load_weights_into",
    "save_pretrained",
    "write_pretrained_index",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
INDEX_PATH = PRETRAINED_DIR / "index.json"

# Constructor arguments that configure training, not the model: never saved, defaults on load.
_TRAINING_ONLY_ARGS = frozenset(
    {"optimizer", "discriminator_optimizer", "scheduler", "discriminator_scheduler", "init_weights"}
)
_ALIASES_KEY = "animzoo_aliases"


class PretrainedError(AnimzooInputError):
    """A pretrained folder / checkpoint / named model cannot be loaded; the message says why and the fix."""


class PretrainedNotFoundError(PretrainedError):
    """A file of a pretrained model (or a named model) does not exist."""


class PretrainedChecksumError(PretrainedError):
    """``model.safetensors`` does not have the sha256 the index records."""


class PretrainedMismatchError(PretrainedError):
    """The weights do not fit the module built from the config (missing / unexpected keys, shapes)."""


# --------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class PretrainedEntry:
    """A named pretrained model.

    Attributes:
        name: the name users pass to :func:`load_pretrained`, ``<method>.<data><size>``.
        method: registry name of the method.
        files: a folder relative to ``animzoo/pretrained/`` (shipped in the package), an absolute
            folder, or an ``https://`` / ``file://`` url of a folder holding ``config.json`` and
            ``model.safetensors``.
        sha256: sha256 of ``model.safetensors``; ``None`` here means "read it from
            ``animzoo/pretrained/index.json``" (the shipped entries keep their hash there, as data).
        recipe: the recipe that trained it.
        licence: licence of the weights.
        data: what it was trained on.
        image_size: the frame size it was trained at.
        description: one line for listings.
    """

    name: str
    method: str
    files: str
    sha256: str | None = None
    recipe: str = ""
    licence: str = ""
    data: str = ""
    image_size: int | None = None
    description: str = ""


PRETRAINED: dict[str, PretrainedEntry] = {
    "monkeynet.synthetic64": PretrainedEntry(
        name="monkeynet.synthetic64",
        method="monkeynet",
        files="monkeynet_synthetic64",
        recipe="recipes/monkeynet/synthetic-64.yaml",
        licence="MIT (trained by the animzoo developers on procedurally generated data)",
        data="SyntheticHeads 64 x 64 (`animzoo data synth --videos 200 --frames 32 --size 64 --seed 0`)",
        image_size=64,
        description="Monkey-Net (10 keypoints) trained on the embedded SyntheticHeads data at 64 px",
    ),
    "sparse2dense.synthetic64": PretrainedEntry(
        name="sparse2dense.synthetic64",
        method="sparse2dense",
        files="sparse2dense_synthetic64",
        recipe="recipes/sparse2dense/synthetic-64.yaml",
        licence="MIT (trained by the animzoo developers on procedurally generated data)",
        data="SyntheticHeads 64 x 64 (`animzoo data synth --videos 200 --frames 32 --size 64 --seed 0`)",
        image_size=64,
        description="Sparse-to-dense motion transfer (70 landmarks, global + 3 local branches, parsing prior) "
        "trained on the embedded SyntheticHeads data at 64 px; driven by landmarks ('animzoo70' detector)",
    ),
    "landmark_detector.synthetic64": PretrainedEntry(
        name="landmark_detector.synthetic64",
        method="landmark_detector",
        files="landmarks_synthetic64",
        recipe="recipes/perception/landmarks-synthetic-64.yaml",
        licence="MIT (trained by the animzoo developers on procedurally generated data)",
        data="SyntheticHeads 64 x 64 (`animzoo data synth --videos 200 --frames 32 --size 64 --seed 0`), pairs 1-3 frames apart",
        image_size=64,
        description="Landmark detector (2-stack hourglass + DSNT + SBR, 70 points) on SyntheticHeads 64 px; AKD/SMS backend 'animzoo70'",
    ),
    "identity_embedder.synthetic64": PretrainedEntry(
        name="identity_embedder.synthetic64",
        method="identity_embedder",
        files="identity_synthetic64",
        recipe="recipes/perception/identity-synthetic-64.yaml",
        licence="MIT (trained by the animzoo developers on procedurally generated data)",
        data="SyntheticHeads 64 x 64 (`animzoo data synth --videos 800 --frames 8 --size 64 --seed 1 --clips-per-identity 4`)",
        image_size=64,
        description="Identity embedder (landmark face crop + slim ResNet-18, 128-d, ArcFace) on SyntheticHeads 64 px; CSIM backend 'animzoo'",
    ),
}


def _read_index(path: Path | None = None) -> dict[str, Any]:
    path = PRETRAINED_DIR / "index.json" if path is None else path
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PretrainedError(
            f"{path}: cannot be read as JSON ({err}); regenerate it with `python -m animzoo.hub index`."
        ) from err
    return data.get("models", {}) if isinstance(data, dict) else {}


def list_pretrained() -> list[str]:
    """Sorted names of the named pretrained models."""
    return sorted(PRETRAINED)


def get_pretrained_entry(name: str) -> PretrainedEntry:
    """The entry called ``name``, with its sha256 filled in from ``index.json`` when the table has none.

    Raises:
        PretrainedNotFoundError: unknown name (the message lists the valid names).
    """
    try:
        entry = PRETRAINED[name]
    except (KeyError, TypeError):
        raise PretrainedNotFoundError(
            f"unknown pretrained model {name!r}; available: {', '.join(list_pretrained()) or '(none)'}. "
            f"A folder written by save_pretrained() can be loaded by its path instead."
        ) from None
    if entry.sha256 is None:
        recorded = _read_index().get(name, {})
        if recorded.get("sha256"):
            entry = dataclasses.replace(entry, sha256=str(recorded["sha256"]))
    return entry


# --------------------------------------------------------------------------- helpers


def _is_plain(value: Any) -> bool:
    """JSON data: None, bool, int, float, str, and lists / dicts (str keys) of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _to_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _omegaconf_to_container(value: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _init_args(hparams: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The constructor arguments worth saving: plain JSON data, no training-only callables."""
    out: dict[str, Any] = {}
    for key, value in dict(hparams).items():
        if key.startswith("_") or key in _TRAINING_ONLY_ARGS:
            continue
        value = _omegaconf_to_container(value)
        if callable(value) and not isinstance(value, type):
            continue  # an optimiser / scheduler factory under another name
        if not _is_plain(value):
            raise PretrainedError(
                f"{where}: hyper-parameter {key!r} = {value!r} ({type(value).__name__}) is not plain "
                f"JSON data, so it cannot go into {CONFIG_NAME}. Make the constructor take plain values "
                f"(numbers, strings, lists, dicts) for it."
            )
        out[key] = _to_plain(value)
    return out


def _method_name(module: nn.Module) -> str:
    from animzoo.registry import list_methods, method_name_of

    name = method_name_of(module)
    if name is None:
        list_methods()  # loads the built-in methods, then try again
        name = method_name_of(module)
    if name is None:
        cls = type(module)
        raise PretrainedError(
            f"{cls.__module__}.{cls.__qualname__} is not a registered method, so a pretrained folder "
            f"could not name it. Decorate the class with @animzoo.registry.register_method('<name>')."
        )
    return name


def _get_method_class(name: str, where: str) -> type:
    from animzoo.registry import get_method, list_methods

    try:
        return get_method(name)
    except KeyError:
        raise PretrainedError(
            f"{where}: unknown method {name!r}; this animzoo ({__version__}) knows: "
            f"{', '.join(list_methods()) or '(none)'}. Upgrade animzoo or check the 'method' field."
        ) from None


def _is_discriminator_prefixes(module: nn.Module) -> list[str]:
    """State-dict prefixes of the discriminator (``discriminator.`` and any submodule whose
    parameters are all discriminator parameters)."""
    disc_fn = getattr(module, "discriminator_parameters", None)
    disc_ids = set()
    if callable(disc_fn):
        try:
            disc_ids = {id(p) for p in disc_fn()}
        except Exception:  # noqa: BLE001 - a method without a discriminator may raise
            disc_ids = set()
    prefixes = []
    if hasattr(module, "discriminator") and isinstance(module.discriminator, nn.Module):
        prefixes.append("discriminator.")
    if disc_ids:
        for name, sub in module.named_modules():
            params = list(sub.parameters())
            if name and params and all(id(p) in disc_ids for p in params):
                prefixes.append(name + ".")
    return prefixes


def _is_loss_module(sub: nn.Module) -> bool:
    cls = type(sub)
    return isinstance(sub, nn.modules.loss._Loss) or cls.__module__.startswith("animzoo.nn.losses")


def _loss_prefixes(module: nn.Module) -> list[str]:
    """Prefixes of loss networks (e.g. the perceptual loss' VGG19): fixed weights from elsewhere."""
    return [name + "." for name, sub in module.named_modules() if name and _is_loss_module(sub)]


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


def _weights_to_save(module: nn.Module, include_discriminator: bool) -> dict[str, torch.Tensor]:
    skip = _loss_prefixes(module)
    if not include_discriminator:
        skip += _is_discriminator_prefixes(module)
    return {k: v for k, v in module.state_dict().items() if not _under(k, skip) and isinstance(v, torch.Tensor)}


def _dedupe_shared(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors sharing memory: keep one copy of identical views (recorded as
    aliases) and copy partial views."""
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for key, t in tensors.items():
        t = t.detach().cpu()
        if t.numel() == 0:
            out[key] = t.contiguous().clone()
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        storage = t.untyped_storage().data_ptr()
        t = t.contiguous().clone() if storage in storages or not t.is_contiguous() else t.contiguous()
        storages.add(storage)
        seen[ident] = key
        out[key] = t
    # A tensor kept as-is may share storage with a later partial view that was cloned: clone all
    # tensors whose storage is used more than once, to be safe.
    counts: dict[int, int] = {}
    for t in out.values():
        if t.numel():
            counts[t.untyped_storage().data_ptr()] = counts.get(t.untyped_storage().data_ptr(), 0) + 1
    for key, t in list(out.items()):
        if t.numel() and counts[t.untyped_storage().data_ptr()] > 1:
            out[key] = t.clone()
    return out, aliases


def _default_image_size(module: nn.Module) -> int | None:
    config = getattr(module, "animzoo_config", None)
    if isinstance(config, Mapping) and config.get("image_size"):
        return int(config["image_size"])
    hparams = getattr(module, "hparams", {}) or {}
    for key in ("image_size", "frame_size", "size"):
        if isinstance(hparams.get(key), int):
            return int(hparams[key])
    size = getattr(module, "image_size", None)
    return int(size) if isinstance(size, int) else None


# --------------------------------------------------------------------------- save


def save_pretrained(
    module: nn.Module,
    directory: str | os.PathLike,
    *,
    include_discriminator: bool = False,
    image_size: int | None = None,
    data: str | Mapping[str, Any] | None = None,
    recipe: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` for ``module`` into ``directory``.

    Args:
        module: a registered animzoo method (an ``AnimationModule`` subclass instance).
        directory: created if missing; other files in it are left alone.
        include_discriminator: also save the discriminator (for fine-tuning with the GAN loss).
        image_size: frame size it was trained at (default: from the module's config / hparams).
        data, recipe, metrics: optional provenance written into ``config.json``.

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.
    """
    from safetensors.torch import save as st_save

    directory = Path(directory)
    name = _method_name(module)
    cls = type(module)
    where = f"{cls.__module__}.{cls.__qualname__}"
    init_args = _init_args(getattr(module, "hparams", {}) or {}, where)
    tensors, aliases = _dedupe_shared(_weights_to_save(module, include_discriminator))
    config = {
        "format": "animzoo-pretrained",
        "format_version": FORMAT_VERSION,
        "method": name,
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "init_args": init_args,
        "animzoo_version": __version__,
        "requires": sorted(getattr(module, "requires", ()) or ()),
        "image_size": image_size if image_size is not None else _default_image_size(module),
        "includes_discriminator": bool(include_discriminator),
        "data": _to_plain(_omegaconf_to_container(data)) if data is not None else None,
        "recipe": recipe,
        "metrics": {k: float(v) for k, v in dict(metrics).items()} if metrics is not None else None,
    }
    metadata = {"format": "pt", "animzoo_method": name}
    if aliases:
        metadata[_ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    weights = st_save(tensors, metadata=metadata)
    directory.mkdir(parents=True, exist_ok=True)
    # Weights first, config last: a folder with a config always has matching weights.
    atomic_write(directory / WEIGHTS_NAME, lambda handle: handle.write(weights))
    config_bytes = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(directory / CONFIG_NAME, lambda handle: handle.write(config_bytes))
    return directory


# --------------------------------------------------------------------------- load


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PretrainedNotFoundError(
            f"{path}: missing. A pretrained folder holds {CONFIG_NAME} and {WEIGHTS_NAME} as written by "
            f"animzoo.hub.save_pretrained(); pass such a folder or a name from {list_pretrained()}."
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PretrainedError(f"{path}: not valid JSON ({err}); re-save the model with save_pretrained().") from err
    if not isinstance(config, dict) or "method" not in config:
        raise PretrainedError(
            f"{path}: has no 'method' field, so it is not an animzoo pretrained config; "
            f"re-save the model with save_pretrained()."
        )
    return config


def _read_weights(path: Path, map_location: Any) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise PretrainedNotFoundError(
            f"{path}: missing. Put the {WEIGHTS_NAME} written by save_pretrained() next to {CONFIG_NAME}."
        )
    device = "cpu" if map_location is None else str(torch.device(map_location))
    try:
        with safe_open(str(path), framework="pt", device=device) as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no iterator
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise PretrainedError(
            f"{path}: cannot be read as safetensors ({err}); the file is truncated or not a "
            f"{WEIGHTS_NAME}; download or save it again."
        ) from err
    if metadata.get(_ALIASES_KEY):
        for alias, target in json.loads(metadata[_ALIASES_KEY]).items():
            tensors[alias] = tensors[target]
    return tensors


def _instantiate(cls: type, init_args: Mapping[str, Any], where: str) -> nn.Module:
    try:
        return cls(**dict(init_args))
    except TypeError as err:
        raise PretrainedError(
            f"{where}: {cls.__qualname__} cannot be built from its init_args ({err}); the config was "
            f"written by another version of the method. Fix the init_args or re-save the model."
        ) from err


def _load_state(module: nn.Module, state: Mapping[str, torch.Tensor], where: str, fix: str) -> None:
    """Strict load, except for the discriminator when the file has none and loss networks."""
    expected = module.state_dict()
    optional = _loss_prefixes(module)
    disc = _is_discriminator_prefixes(module)
    if not any(_under(k, disc) for k in state):
        optional += disc
    state = {k: v for k, v in state.items() if not _under(k, _loss_prefixes(module))}
    missing = [k for k in expected if k not in state and not _under(k, optional)]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:

        def few(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {few(shapes)}")
        raise PretrainedMismatchError(
            f"{where}: the weights do not fit {type(module).__qualname__}: " + "; ".join(parts) + f". {fix}"
        )
    module.load_state_dict(dict(state), strict=False)


def load_weights_into(module: nn.Module, source: str | os.PathLike, map_location: Any = "cpu") -> None:
    """Load the weights of ``source`` into ``module`` (same method, same sizes), in place.

    ``source``: a Lightning checkpoint (``.ckpt``, its ``state_dict``), a :func:`save_pretrained`
    folder, or a name in :data:`PRETRAINED` (sha256 checked). Strict like :func:`from_pretrained`,
    except that a file without a discriminator leaves the module's as it is.

    Raises:
        PretrainedError: a missing / unreadable file, or weights that do not fit ``module`` (the
            keys or shapes that differ are named).
    """
    fix = "Start from weights of the same method, built with the same recipe sizes."
    if isinstance(source, str) and source in PRETRAINED:
        where, state = source, load_pretrained(source, map_location).state_dict()
    else:
        path = Path(source).expanduser()
        if path.suffix == ".ckpt":
            if not path.is_file():
                raise PretrainedNotFoundError(f"{path}: no such checkpoint file. Check the path.")
            where, state = str(path), _load_checkpoint_file(path)["state_dict"]
        else:
            directory, _ = _resolve_directory(path)
            where, state = str(directory / WEIGHTS_NAME), _read_weights(directory / WEIGHTS_NAME, map_location)
    _load_state(module, state, where, fix)


def _resolve_directory(dir_or_name: str | os.PathLike) -> tuple[Path, PretrainedEntry | None]:
    if isinstance(dir_or_name, str) and dir_or_name in PRETRAINED:
        return _entry_directory(get_pretrained_entry(dir_or_name)), get_pretrained_entry(dir_or_name)
    path = Path(dir_or_name).expanduser()
    if path.is_file():
        if path.name in (CONFIG_NAME, WEIGHTS_NAME):
            return path.parent, None
        hint = " (a Lightning checkpoint: use from_checkpoint / --checkpoint)" if path.suffix == ".ckpt" else ""
        raise PretrainedError(
            f"{path}: is a file{hint}; from_pretrained() takes a folder holding {CONFIG_NAME} and "
            f"{WEIGHTS_NAME}, or a name from {list_pretrained()}."
        )
    if not path.is_dir():
        raise PretrainedNotFoundError(
            f"{dir_or_name}: neither a folder nor a named pretrained model; available names: "
            f"{', '.join(list_pretrained()) or '(none)'}. Check the path."
        )
    return path, None


def from_pretrained(dir_or_name: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """Build a module from a pretrained folder (or a name in :data:`PRETRAINED`), in eval mode.

    A name goes through :func:`load_pretrained` (sha256 checked). The module gets an
    ``animzoo_config`` attribute: the config dict (``image_size`` etc.).

    Raises:
        PretrainedError (an :class:`~animzoo.errors.AnimzooInputError`): missing files, bad JSON,
            unknown method, weights that do not fit the module.
    """
    if isinstance(dir_or_name, str) and dir_or_name in PRETRAINED:
        return load_pretrained(dir_or_name, map_location=map_location)
    directory, _ = _resolve_directory(dir_or_name)
    return _load_directory(directory, map_location)


def _load_directory(directory: Path, map_location: Any) -> nn.Module:
    config_path = directory / CONFIG_NAME
    config = _read_config(config_path)
    cls = _get_method_class(str(config["method"]), str(config_path))
    init_args = config.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise PretrainedError(f"{config_path}: 'init_args' must be a JSON object; re-save the model.")
    module = _instantiate(cls, init_args, str(config_path))
    state = _read_weights(directory / WEIGHTS_NAME, None)
    _load_state(
        module,
        state,
        str(directory / WEIGHTS_NAME),
        f"Re-save the model with save_pretrained(), or check that {CONFIG_NAME} belongs to these weights.",
    )
    module.animzoo_config = dict(config)
    if map_location is not None:
        module.to(torch.device(map_location))
    return module.eval()


def _entry_directory(entry: PretrainedEntry) -> Path:
    files = entry.files
    if files.startswith(("https://", "http://", "file://")):
        return _download_entry(entry)
    path = Path(files)
    return path if path.is_absolute() else PRETRAINED_DIR / path


def _cache_dir() -> Path:
    return Path(os.environ.get("ANIMZOO_CACHE_DIR", Path.home() / ".cache" / "animzoo")) / "pretrained"


def _download_entry(entry: PretrainedEntry, allow_download: bool | None = None) -> Path:
    target = _cache_dir() / entry.name
    if (target / CONFIG_NAME).is_file() and (target / WEIGHTS_NAME).is_file():
        return target
    if not download_allowed(allow_download):
        raise PretrainedNotFoundError(
            f"pretrained model {entry.name!r} is not in {target}; download it by running with "
            f"ANIMZOO_ALLOW_DOWNLOAD=1 (from {entry.files}), or put {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"from there into {target}."
        )
    target.mkdir(parents=True, exist_ok=True)
    for fname in (WEIGHTS_NAME, CONFIG_NAME):
        url = entry.files.rstrip("/") + "/" + fname
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                data = resp.read()
        except OSError as err:
            raise PretrainedNotFoundError(f"{url}: download failed ({err}); check the connection.") from err
        if fname == WEIGHTS_NAME and entry.sha256 and hashlib.sha256(data).hexdigest() != entry.sha256:
            raise PretrainedChecksumError(
                f"{url}: downloaded file has sha256 {hashlib.sha256(data).hexdigest()}, expected "
                f"{entry.sha256}; nothing was kept. Try again later or report the broken url."
            )
        atomic_write(target / fname, lambda handle: handle.write(data))
    return target


def load_pretrained(name: str, map_location: Any = "cpu") -> nn.Module:
    """Load the named pretrained model (see :data:`PRETRAINED`), verifying its sha256 first.

    Raises:
        PretrainedNotFoundError: unknown name (lists the names) or weights not installed.
        PretrainedChecksumError: ``model.safetensors`` differs from the recorded sha256 (both hashes in the message).
    """
    entry = get_pretrained_entry(name)
    directory = _entry_directory(entry)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file() or not (directory / CONFIG_NAME).is_file():
        missing = weights if not weights.is_file() else directory / CONFIG_NAME
        raise PretrainedNotFoundError(
            f"{missing}: missing, so the pretrained model {name!r} is not installed. Reinstall animzoo "
            f"from a release that ships it, or train it with `animzoo fit --config {entry.recipe or '<recipe>'}` "
            f"and export the checkpoint with `python -m animzoo.hub export CKPT {directory} --name {name}` "
            f"(then `python -m animzoo.hub index`)."
        )
    if not entry.sha256:
        raise PretrainedChecksumError(
            f"{PRETRAINED_DIR / 'index.json'}: records no sha256 for {name!r}, so {weights} cannot be verified; regenerate the "
            f"index with `python -m animzoo.hub index` after putting the weights in place."
        )
    actual = sha256_of(weights)
    if actual != entry.sha256:
        raise PretrainedChecksumError(
            f"{weights}: sha256 {actual} does not match the expected {entry.sha256} recorded for {name!r}; "
            f"the file is corrupt or was replaced. Reinstall animzoo (or, if you replaced the weights "
            f"yourself on purpose, run `python -m animzoo.hub index`)."
        )
    module = _load_directory(directory, map_location)
    if module.animzoo_config.get("method") != entry.method:
        raise PretrainedError(
            f"{directory / CONFIG_NAME}: method {module.animzoo_config.get('method')!r} differs from the "
            f"{entry.method!r} that {name!r} is registered as; reinstall animzoo."
        )
    module.animzoo_config["pretrained_name"] = name
    return module


# --------------------------------------------------------------------------- Lightning checkpoints


def _load_checkpoint_file(path: Path) -> dict[str, Any]:
    def unreadable(err: BaseException) -> PretrainedError:
        return PretrainedError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(err).__name__}: {err}); the file is "
            f"truncated or not a .ckpt written by `animzoo fit`."
        )

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first:
        if "weights_only" not in str(first) and "Unsupported global" not in str(first):
            raise unreadable(first) from first
        warnings.warn(
            f"{path}: the checkpoint holds Python objects besides tensors, so it is loaded with "
            f"weights_only=False (this runs code from the file: only load checkpoints you trust).",
            stacklevel=3,
        )
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise unreadable(err) from err
    except Exception as err:
        raise unreadable(err) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise PretrainedError(
            f"{path}: has no 'state_dict', so it is not a Lightning checkpoint; pass a .ckpt written by "
            f"`animzoo fit` (for a pretrained folder use --pretrained / from_pretrained)."
        )
    return ckpt


def _import_class(class_path: str, where: str) -> type:
    module_name, _, attr = class_path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise PretrainedError(f"{where}: class {class_path!r} cannot be imported ({err}).") from err
    if not isinstance(obj, type) or not issubclass(obj, nn.Module):
        raise PretrainedError(f"{where}: {class_path!r} is not a model class.")
    return obj


def _checkpoint_image_size(ckpt: Mapping[str, Any], hparams: Mapping[str, Any]) -> int | None:
    if isinstance(hparams.get("image_size"), int):
        return int(hparams["image_size"])
    data = dict(ckpt.get("datamodule_hyper_parameters") or {})
    if isinstance(data.get("image_size"), int):
        return int(data["image_size"])
    synthetic = _omegaconf_to_container(data.get("synthetic"))
    if isinstance(synthetic, Mapping) and isinstance(synthetic.get("size"), int):
        return int(synthetic["size"])
    return None


def from_checkpoint(
    path: str | os.PathLike, method: str | None = None, map_location: Any = "cpu"
) -> nn.Module:
    """Build a method from a Lightning checkpoint written by ``animzoo fit``, in eval mode.

    The class comes from the checkpoint (``checkpoint["animzoo"]["method"]`` or the ``_class_path``
    LightningCLI stores in ``hyper_parameters``); ``method``, when given, must agree with it (a
    checkpoint of another method is refused) and names the class for a checkpoint that does not say.

    Raises:
        PretrainedError: missing / unreadable file, another method than ``method``, weights that do
            not fit.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        hint = " (a pretrained folder: use from_pretrained / --pretrained)" if path.is_dir() else ""
        raise PretrainedNotFoundError(f"{path}: no such checkpoint file{hint}. Check the path.")
    ckpt = _load_checkpoint_file(path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    meta = ckpt.get("animzoo") if isinstance(ckpt.get("animzoo"), Mapping) else {}
    from animzoo.registry import list_methods, method_name_of

    cls: type | None = None
    if meta.get("method"):
        cls = _get_method_class(str(meta["method"]), str(path))
    elif meta.get("class_path") or hparams.get("_class_path"):
        cls = _import_class(str(meta.get("class_path") or hparams.get("_class_path")), str(path))
    found = method_name_of(cls) if cls is not None else None
    if cls is not None and found is None:
        list_methods()
        found = method_name_of(cls)
    if method is not None:
        if cls is None:
            cls = _get_method_class(method, str(path))
            found = method
        elif found != method:
            raise PretrainedError(
                f"{path}: is a checkpoint of {found or cls.__qualname__!r}, not of {method!r}; pass a "
                f"{method} checkpoint, or drop the method / --method to load it as {found or cls.__qualname__}."
            )
    if cls is None:
        raise PretrainedError(
            f"{path}: does not say which method it belongs to (no 'animzoo' entry, no '_class_path' "
            f"hyper-parameter); pass method=... / --method NAME, one of {', '.join(list_methods())}."
        )
    init_args = {
        k: v for k, v in hparams.items() if not k.startswith("_") and k not in _TRAINING_ONLY_ARGS
    }
    module = _instantiate(cls, init_args, str(path))
    _load_state(
        module,
        ckpt["state_dict"],
        str(path),
        "The checkpoint was written by another version or configuration of the method.",
    )
    module.animzoo_config = {
        "method": found,
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "init_args": init_args,
        "image_size": _checkpoint_image_size(ckpt, hparams),
        "checkpoint": str(path),
    }
    if map_location is not None:
        module.to(torch.device(map_location))
    return module.eval()


# --------------------------------------------------------------------------- index / export


def write_pretrained_index(
    root: str | os.PathLike | None = None, table: Mapping[str, PretrainedEntry] | None = None
) -> Path:
    """(Re)write ``root/index.json`` with the sha256 of every shipped entry's ``model.safetensors``.

    Entries whose files are not there keep what the index had (or ``null``); entries with a url
    keep their table sha256. Each present folder's ``config.json`` must name the entry's method.

    Returns:
        The path of ``index.json``.
    """
    root = Path(PRETRAINED_DIR if root is None else root)
    table = PRETRAINED if table is None else table
    index_path = root / "index.json"
    old = _read_index(index_path)
    models: dict[str, Any] = {}
    for name, entry in sorted(table.items()):
        record: dict[str, Any] = {"files": entry.files, "method": entry.method, "sha256": entry.sha256}
        if not entry.files.startswith(("https://", "http://", "file://")):
            folder = Path(entry.files) if Path(entry.files).is_absolute() else root / entry.files
            weights = folder / WEIGHTS_NAME
            if weights.is_file():
                config = _read_config(folder / CONFIG_NAME)
                if config.get("method") != entry.method:
                    raise PretrainedError(
                        f"{folder / CONFIG_NAME}: method {config.get('method')!r} but the entry {name!r} "
                        f"is a {entry.method!r}; export the right checkpoint into {folder}."
                    )
                record["sha256"] = sha256_of(weights)
                record["bytes"] = weights.stat().st_size
            else:
                record["sha256"] = old.get(name, {}).get("sha256")
        models[name] = record
    root.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format_version": FORMAT_VERSION, "models": models}, indent=2, sort_keys=True) + "\n"
    atomic_write(index_path, lambda handle: handle.write(text.encode()))
    return index_path


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--index"]:
        argv = ["index", *argv[1:]]
    parser = argparse.ArgumentParser(
        prog="python -m animzoo.hub",
        description="Maintain the pretrained models shipped with animzoo.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m animzoo.hub export runs/monkeynet/last.ckpt animzoo/pretrained/monkeynet_synthetic64 \\\n"
            "      --recipe recipes/monkeynet/synthetic-64.yaml\n"
            "  python -m animzoo.hub index     # sha256 of every shipped model.safetensors -> index.json\n"
            "  python -m animzoo.hub list\n"
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="checkpoint (.ckpt) -> pretrained folder")
    export.add_argument("checkpoint", type=Path)
    export.add_argument("directory", type=Path)
    export.add_argument("--method", help="expected method (refuses a checkpoint of another one)")
    export.add_argument("--image-size", type=int, help="training frame size (default: from the checkpoint)")
    export.add_argument("--recipe", help="recipe that trained it")
    export.add_argument("--data", help="what it was trained on")
    export.add_argument(
        "--metrics", type=Path, help="JSON file of test metrics to record (e.g. the metrics.json of `animzoo test`)"
    )
    export.add_argument("--include-discriminator", action="store_true")
    commands.add_parser("index", help=f"rewrite {INDEX_PATH}")
    commands.add_parser("list", help="list the named pretrained models")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            module = from_checkpoint(args.checkpoint, method=args.method)
            metrics = json.loads(args.metrics.read_text()) if args.metrics else None
            if isinstance(metrics, dict) and isinstance(metrics.get("metrics"), dict):
                metrics = metrics["metrics"]  # the metrics.json that `animzoo test` writes
            out = save_pretrained(
                module, args.directory, include_discriminator=args.include_discriminator,
                image_size=args.image_size, recipe=args.recipe, data=args.data, metrics=metrics,
            )
            print(f"wrote {out / WEIGHTS_NAME} ({(out / WEIGHTS_NAME).stat().st_size} bytes) and {out / CONFIG_NAME}")
        elif args.command == "index":
            path = write_pretrained_index()
            print(path.read_text(), end="")
        else:
            index = _read_index()
            for name in list_pretrained():
                entry = PRETRAINED[name]
                sha = index.get(name, {}).get("sha256") or entry.sha256 or "-"
                present = (_entry_directory(entry) / WEIGHTS_NAME).is_file() if "://" not in entry.files else None
                print(f"{name}\t{entry.method}\t{entry.image_size}\tinstalled={present}\tsha256={sha}")
    except AnimzooInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
