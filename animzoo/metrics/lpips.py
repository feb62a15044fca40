"""LPIPS (Zhang et al. 2018) per frame, de-duplicated by ``(video_id, frame_index)``.

The network is the ``lpips`` package's own ``LPIPS`` class (version 0.1, ``lpips=True``): its
linear heads come from the wheel (``lpips/weights/v0.1/<net>.pth``, loaded by the package with
``pretrained=True``), its trunk is built with ``pnet_rand=True`` (torchvision's architecture with
random weights: no download), then animzoo loads the torchvision ImageNet trunk, resolved and
sha256-checked through :mod:`animzoo.weights` (``lpips-alexnet``, ``lpips-vgg16``,
``lpips-squeezenet``), into the package's layer slices.

Input: ``B x 3 x H x W`` in [0, 1], converted here to the [-1, 1] that LPIPS expects (passing
[0, 1] unconverted is a known bug of evaluation scripts). No resizing; autocast off. Output key
``lpips@<net>`` (``alex`` default, ``vgg``, ``squeeze``); lower is better.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from animzoo.metrics.pixel import FrameMetric
from animzoo.metrics.weight_specs import LPIPS_TRUNKS
from animzoo.weights import (
    WeightsError,
    WeightsNotFoundError,
    get_weight_spec,
    load_state_dict_file,
    resolve_weight,
)

__all__ = ["LPIPS", "LPIPS_NETS", "build_lpips", "load_trunk_into_lpips"]

LPIPS_NETS: tuple[str, ...] = tuple(LPIPS_TRUNKS)


def load_trunk_into_lpips(model: nn.Module, trunk_state: dict[str, Tensor]) -> None:
    """Copy a torchvision trunk state dict (``features.<i>.<param>``; classifier keys ignored)
    into an ``lpips.LPIPS`` model, whose ``net.slice<k>.<i>`` hold torchvision's ``features[i]``.

    Raises:
        ValueError: a layer of the slices has no weights in ``trunk_state`` (wrong network).
    """
    mapped: dict[str, Tensor] = {}
    for slice_name, block in model.net.named_children():
        if not slice_name.startswith("slice"):
            continue
        for index, layer in block.named_children():
            for param in layer.state_dict():
                source = f"features.{index}.{param}"
                if source not in trunk_state:
                    raise ValueError(f"trunk weights have no {source!r}: not the torchvision {model.pnet_type} trunk")
                mapped[f"{slice_name}.{index}.{param}"] = trunk_state[source]
    model.net.load_state_dict(mapped, strict=True)


def build_lpips(net: str = "alex", trunk_path: str | Path | None = None) -> tuple[nn.Module, str]:
    """A frozen ``lpips.LPIPS(net=net)`` with the wheel's heads and the resolved trunk.

    Args:
        net: ``alex``, ``vgg`` or ``squeeze``.
        trunk_path: an explicit torchvision trunk file (used as given, not hash-checked); None
            resolves the registered weight (``lpips-alexnet`` ...).

    Returns:
        ``(model, source)``: the model (eval, requires_grad False) and where the trunk came from.

    Raises:
        WeightsError: the trunk cannot be found or is damaged; ImportError: lpips missing.
    """
    if net not in LPIPS_TRUNKS:
        raise ValueError(f"LPIPS net must be one of {', '.join(LPIPS_NETS)}, got {net!r}")
    name = LPIPS_TRUNKS[net]
    path = resolve_weight(name, trunk_path)  # explicit path > weights dir > hub cache (> opt-in download)
    import lpips as lpips_package

    with warnings.catch_warnings():
        # lpips calls torchvision's deprecated `pretrained=False`; pnet_rand=True makes it build no download
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        model = lpips_package.LPIPS(pretrained=True, net=net, version="0.1", pnet_rand=True, verbose=False)
    load_trunk_into_lpips(model, load_state_dict_file(path))
    model.requires_grad_(False)
    model.eval()
    source = f"{path} (explicit path)" if trunk_path is not None else f"{name} ({path})"
    return model, source


class LPIPS(FrameMetric):
    """LPIPS of each frame (``lpips@<net>``), lower is better.

    Args:
        net: trunk, ``alex`` (default), ``vgg`` or ``squeeze``.
        weights_path: explicit torchvision trunk file (else resolved through animzoo.weights).

    A missing or damaged trunk does not raise: ``update`` is a no-op, ``compute`` is NaN and
    ``status`` names the file and the command that fetches it.
    """

    higher_is_better = False

    def __init__(self, net: str = "alex", weights_path: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if net not in LPIPS_TRUNKS:
            raise ValueError(f"LPIPS net must be one of {', '.join(LPIPS_NETS)}, got {net!r}")
        self.net_name = net
        self.output_name = f"lpips@{net}"
        self.model: nn.Module | None = None
        try:
            self.model, source = build_lpips(net, weights_path)
            self.status = f"ok: lpips 0.1 heads (lpips wheel) + {net} trunk {source}; inputs [0,1] -> [-1,1]"
        except WeightsNotFoundError:
            name = LPIPS_TRUNKS[net]
            filename = get_weight_spec(name).filename
            self.status = (f"unavailable: {filename} ({name}) not found - run `animzoo weights download {name}` "
                           f"(or put the file in $ANIMZOO_WEIGHTS_DIR)")
        except WeightsError as exc:  # a damaged copy
            self.status = f"unavailable: {exc}"
        except ImportError as exc:
            self.status = f"unavailable: {exc} - `pip install 'animzoo[metrics]'` (lpips, torchvision)"

    @property
    def available(self) -> bool:
        return self.model is not None

    def train(self, mode: bool = True) -> LPIPS:
        super().train(mode)
        if self.model is not None:
            self.model.eval()  # the heads have dropout: never active in a metric
        return self

    def update(
        self,
        prediction: Tensor,
        target: Tensor,
        video_id: Sequence[str] | str,
        frame_index: Tensor | Sequence[int] | int,
    ) -> None:
        """Add a batch of frames: ``prediction`` and ``target`` ``B x 3 x H x W`` in [0, 1]."""
        if self.model is None:
            return
        super().update(prediction, target, video_id, frame_index)

    def frame_values(self, prediction: Tensor, target: Tensor) -> Tensor:
        """``B`` LPIPS distances of ``B x 3 x H x W`` frames in [0, 1]."""
        assert self.model is not None
        dtype = next(self.model.parameters()).dtype
        with torch.no_grad(), torch.autocast(prediction.device.type, enabled=False):
            x = prediction.to(dtype) * 2.0 - 1.0  # LPIPS expects [-1, 1]
            y = target.to(dtype) * 2.0 - 1.0
            return self.model(x, y, normalize=False).reshape(-1)

    def compute(self) -> dict[str, Tensor]:
        if self.model is None:
            return {self.output_name: torch.tensor(float("nan"), device=self.device)}
        return {self.output_name: super().compute()}
