"""Convert an original monkey-net checkpoint (AliaksandrSiarohin/monkey-net) to animzoo's layout.

The original ``*-checkpoint.pth.tar`` is a dict with the state dicts ``kp_detector``,
``generator`` and ``discriminator`` (plus optimiser states, ``epoch`` and ``it``, ignored here).
Its networks are 3-D: convolution weights are ``out x in x 1 x k x k`` (a time extent of 1) and
the norms are ``SynchronizedBatchNorm3d`` / ``InstanceNorm3d``. Our networks are the same
computation in 2-D, so the conversion drops the time axis of every weight and renames module
paths:

=================================================  ==================================================
original                                            animzoo ``MonkeyNet`` state dict
=================================================  ==================================================
kp_detector.predictor.*                             keypoint_detector.hourglass.*
generator.appearance_encoder.*                      generator.appearance_encoder.*
generator.dense_motion_module.group_blocks.*        generator.dense_motion.group_blocks.*
generator.dense_motion_module.hourglass.*           generator.dense_motion.hourglass.*
generator.video_decoder.*                           generator.decoder.*
generator.refinement_module.r<i>.*                  generator.refinement.<i>.*
generator.refinement_module.conv-last.*             generator.final.*
discriminator.down_blocks.*                         discriminator.discs.1.down_blocks.*
discriminator.conv.*                                discriminator.discs.1.conv.*
=================================================  ==================================================

:func:`monkeynet_kwargs_from_config` turns the original YAML config (``model_params`` and
``train_params.loss_weights``) into :class:`~animzoo.methods.monkeynet.MonkeyNet` keyword
arguments, so ``MonkeyNet(**kwargs).load_state_dict(convert_monkeynet_checkpoint(ckpt))``
reproduces a published model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["convert_monkeynet_checkpoint", "monkeynet_kwargs_from_config", "CheckpointConversionError"]


class CheckpointConversionError(ValueError):
    """The checkpoint does not have the original monkey-net layout (or does not fit the model)."""


# (pattern on "<section>.<original key>", replacement) in order; the first match wins.
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^kp_detector\.predictor\.(.+)$"), r"keypoint_detector.hourglass.\1"),
    (re.compile(r"^generator\.appearance_encoder\.(.+)$"), r"generator.appearance_encoder.\1"),
    (re.compile(r"^generator\.dense_motion_module\.(group_blocks|hourglass)\.(.+)$"), r"generator.dense_motion.\1.\2"),
    (re.compile(r"^generator\.video_decoder\.(.+)$"), r"generator.decoder.\1"),
    (re.compile(r"^generator\.refinement_module\.r(\d+)\.(.+)$"), r"generator.refinement.\1.\2"),
    (re.compile(r"^generator\.refinement_module\.conv-last\.(weight|bias)$"), r"generator.final.\1"),
    (re.compile(r"^discriminator\.down_blocks\.(.+)$"), r"discriminator.discs.1.down_blocks.\1"),
    (re.compile(r"^discriminator\.conv\.(weight|bias)$"), r"discriminator.discs.1.conv.\1"),
]

_SECTIONS = ("kp_detector", "generator", "discriminator")


def _rename(key: str) -> str | None:
    for pattern, replacement in _RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def _to_2d(value: Tensor, key: str) -> Tensor:
    if value.dim() == 5:
        if value.shape[2] != 1:
            raise CheckpointConversionError(
                f"{key}: a 3-D kernel with time extent {value.shape[2]} (shape {tuple(value.shape)}) mixes frames "
                "and has no 2-D equivalent; only the per-frame (1, k, k) kernels of monkey-net's configs convert"
            )
        return value[:, :, 0].contiguous()
    return value


def convert_monkeynet_checkpoint(
    original: Mapping[str, Any],
    *,
    include_discriminator: bool = True,
    model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """Map an original monkey-net checkpoint dict to a :class:`MonkeyNet` state dict.

    Args:
        original: the loaded checkpoint (``torch.load(path, map_location="cpu",
            weights_only=True)``) with state dicts under ``kp_detector`` and ``generator`` (and
            ``discriminator``). Keys may carry a DataParallel ``module.`` prefix.
        include_discriminator: also convert ``discriminator`` (needed to continue training;
            animation needs only the other two).
        model: when given, the result is checked against ``model.state_dict()``: missing and
            unexpected keys and shape mismatches raise with the exact key names. BatchNorm
            ``num_batches_tracked`` counters absent from old checkpoints are filled with 0.

    Returns:
        ``{our key: tensor}`` ready for ``model.load_state_dict(..., strict=True)`` (strict
        when ``include_discriminator`` or the model has no discriminator).

    Raises:
        CheckpointConversionError: a section is missing, a key matches no rule (listed), or
            the result does not fit ``model`` (missing / unexpected / shape, listed).
    """
    if not isinstance(original, Mapping):
        raise CheckpointConversionError(f"expected a checkpoint dict, got {type(original).__name__}")
    required = ["kp_detector", "generator"] + (["discriminator"] if include_discriminator else [])
    absent = [s for s in required if s not in original]
    if absent:
        raise CheckpointConversionError(
            f"not an original monkey-net checkpoint: missing sections {absent} (found keys {sorted(map(str, original))}); "
            "expected the dict written by monkey-net's Logger.save_cpk"
        )
    converted: dict[str, Tensor] = {}
    unmatched: list[str] = []
    for section in required:
        state = original[section]
        if not isinstance(state, Mapping):
            raise CheckpointConversionError(f"section {section!r} is not a state dict ({type(state).__name__})")
        for key, value in state.items():
            bare = key[len("module."):] if key.startswith("module.") else key
            full = f"{section}.{bare}"
            target = _rename(full)
            if target is None:
                unmatched.append(full)
                continue
            if not isinstance(value, Tensor):
                raise CheckpointConversionError(f"{full}: expected a tensor, got {type(value).__name__}")
            converted[target] = _to_2d(value, full)
    if unmatched:
        raise CheckpointConversionError(
            f"{len(unmatched)} key(s) of the checkpoint match no monkey-net module: {sorted(unmatched)}"
        )
    if model is not None:
        expected = model.state_dict()
        if not include_discriminator:
            expected = {k: v for k, v in expected.items() if not k.startswith("discriminator.")}
        for key, value in expected.items():
            if key.endswith("num_batches_tracked") and key not in converted:
                converted[key] = torch.zeros_like(value)
        missing = sorted(set(expected) - set(converted))
        unexpected = sorted(set(converted) - set(expected))
        shapes = sorted(
            f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in set(expected) & set(converted)
            if converted[k].shape != expected[k].shape
        )
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            if shapes:
                parts.append(f"shape mismatches {shapes}")
            raise CheckpointConversionError(
                "the converted checkpoint does not fit this MonkeyNet (build it with the original config's "
                "settings, see monkeynet_kwargs_from_config): " + "; ".join(parts)
            )
    return converted


def monkeynet_kwargs_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`MonkeyNet` keyword arguments from an original monkey-net YAML config (loaded).

    Reads ``model_params`` (``common_params``, ``kp_detector_params``, ``generator_params``
    with its ``dense_motion_params`` / ``kp_embedding_params``, ``discriminator_params``) and
    ``train_params.loss_weights``. Raises ``CheckpointConversionError`` for settings animzoo's
    port does not implement (temporal kernels, a dense-motion-free generator, a rescaled
    discriminator).
    """
    model = config.get("model_params")
    if not isinstance(model, Mapping):
        raise CheckpointConversionError("config has no model_params section (is this a monkey-net config?)")
    common = model.get("common_params", {})
    kp = dict(model.get("kp_detector_params", {}))
    gen = dict(model.get("generator_params", {}))
    disc = dict(model.get("discriminator_params", {}))
    kwargs: dict[str, Any] = {
        "num_kp": common.get("num_kp", 10),
        "num_channels": common.get("num_channels", 3),
        "kp_variance": common.get("kp_variance", "matrix"),
    }
    if kwargs["kp_variance"] == "single":
        raise CheckpointConversionError("kp_variance 'single' is not implemented; use 'matrix' or a number")
    kwargs["keypoint_detector"] = {
        k: kp[k] for k in ("block_expansion", "max_features", "num_blocks", "temperature", "scale_factor", "clip_variance")
        if k in kp
    }
    dm = gen.get("dense_motion_params")
    if dm is None:
        raise CheckpointConversionError("generator_params without dense_motion_params (identity motion) is not ported")
    mask = dict(dm.get("mask_embedding_params", {}))
    dense = {k: dm[k] for k in ("block_expansion", "max_features", "num_blocks", "num_group_blocks", "use_mask",
                                "use_correction", "bg_init", "scale_factor") if k in dm}
    renames = {"use_heatmap": "use_heatmap", "use_difference": "use_difference",
               "use_deformed_source_image": "use_deformed_source", "heatmap_type": "heatmap_type",
               "norm_const": "norm_const"}
    # MovementEmbeddingModule's own defaults (use_heatmap=True, others False, gaussian, 'sum').
    dense.update({"use_heatmap": True, "use_difference": False, "use_deformed_source": False,
                  "heatmap_type": "gaussian", "norm_const": "sum"})
    dense.update({renames[k]: v for k, v in mask.items() if k in renames})
    kwargs["dense_motion"] = dense
    emb = gen.get("kp_embedding_params")
    generator = {k: gen[k] for k in ("block_expansion", "max_features", "num_blocks", "num_refinement_blocks") if k in gen}
    generator["use_kp_embedding"] = emb is not None
    if emb is not None:
        generator["embedding_scale_factor"] = emb.get("scale_factor", 1)
        generator["embedding_norm_const"] = emb.get("norm_const", "sum")
        generator["embedding_heatmap_type"] = emb.get("heatmap_type", "gaussian")
    kwargs["generator"] = generator
    if disc.get("scale_factor", 1) != 1:
        raise CheckpointConversionError("a discriminator with scale_factor != 1 is not ported")
    discriminator = {k: disc[k] for k in ("block_expansion", "max_features", "num_blocks") if k in disc}
    d_emb = disc.get("kp_embedding_params")
    discriminator["kp_conditioning"] = d_emb is not None
    if d_emb is not None:
        norm = d_emb.get("norm_const", "sum")
        if norm == "sum" or d_emb.get("heatmap_type", "gaussian") != "gaussian":
            raise CheckpointConversionError("only gaussian discriminator heatmaps with a numeric norm_const are ported")
        discriminator["kp_norm_const"] = float(norm)
    kwargs["discriminator"] = discriminator
    weights = (config.get("train_params") or {}).get("loss_weights")
    if weights:
        kwargs["loss_weights"] = {k: weights[k] for k in ("reconstruction", "reconstruction_deformed",
                                                           "generator_gan", "discriminator_gan") if k in weights}
    return kwargs
