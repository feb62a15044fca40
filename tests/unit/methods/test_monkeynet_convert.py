"""Converting an original monkey-net checkpoint (3-D modules) to animzoo's MonkeyNet.

The test writes a checkpoint in the original layout itself: module paths as monkey-net's
``modules/{keypoint_detector,generator,dense_motion_module,discriminator,util}.py`` name them
(KPDetector.predictor = Hourglass, MotionTransferGenerator.appearance_encoder /
dense_motion_module / video_decoder / refinement_module.r<i> / 'conv-last', Discriminator
.down_blocks / .conv) and 5-D convolution weights with a time extent of 1, from the tensors of a
randomly initialised animzoo model; then converts, loads strictly into a fresh model and
compares outputs.
"""

from __future__ import annotations

import io

import pytest
import torch

from animzoo.methods.monkeynet import MonkeyNet, convert_monkeynet_checkpoint
from animzoo.methods.monkeynet.convert import CheckpointConversionError, monkeynet_kwargs_from_config

CONFIG = dict(
    num_kp=4,
    keypoint_detector=dict(block_expansion=8, max_features=32, num_blocks=3, scale_factor=1.0),
    dense_motion=dict(block_expansion=8, max_features=32, num_blocks=3, num_group_blocks=2),
    generator=dict(block_expansion=8, max_features=32, num_blocks=3, num_refinement_blocks=2),
    discriminator=dict(block_expansion=8, max_features=32),
)


def _original_name(ours: str) -> tuple[str, str]:
    """Our state-dict key -> (checkpoint section, original key), written from monkey-net's names."""
    prefixes = [
        ("keypoint_detector.hourglass.", "kp_detector", "predictor."),
        ("generator.appearance_encoder.", "generator", "appearance_encoder."),
        ("generator.dense_motion.", "generator", "dense_motion_module."),
        ("generator.decoder.", "generator", "video_decoder."),
        ("generator.final.", "generator", "refinement_module.conv-last."),
        ("discriminator.discs.1.", "discriminator", ""),
    ]
    if ours.startswith("generator.refinement."):
        index, rest = ours[len("generator.refinement."):].split(".", 1)
        return "generator", f"refinement_module.r{index}.{rest}"
    for prefix, section, original in prefixes:
        if ours.startswith(prefix):
            return section, original + ours[len(prefix):]
    raise AssertionError(f"no original name for {ours}")


def _write_original(model: MonkeyNet, drop_batch_counters: bool = False) -> bytes:
    sections: dict[str, dict[str, torch.Tensor]] = {"kp_detector": {}, "generator": {}, "discriminator": {}}
    for key, value in model.state_dict().items():
        if drop_batch_counters and key.endswith("num_batches_tracked"):
            continue  # checkpoints of torch < 0.4.1 have no counters
        section, name = _original_name(key)
        if value.dim() == 4:  # Conv2d k x k -> Conv3d (1, k, k)
            value = value.unsqueeze(2)
        sections[section][name] = value.clone()
    checkpoint = {**sections, "epoch": 20, "it": 12345, "optimizer_generator": {"state": {}, "param_groups": []}}
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def _randomised(seed: int) -> MonkeyNet:
    torch.manual_seed(seed)
    model = MonkeyNet(**CONFIG)
    with torch.no_grad():  # also make BatchNorm statistics and zero-initialised layers non-trivial
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _outputs(model: MonkeyNet) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    batch = {"source": torch.rand(2, 3, 64, 64, generator=g), "driving": torch.rand(2, 3, 64, 64, generator=g)}
    with torch.no_grad():
        out = model.animate(batch)
        _, logits = model.discriminator(batch["driving"], out["keypoints"])
    return {"prediction": out["prediction"], "kp": out["keypoints"]["value"], "logits": logits["1"]}


def _load(blob: bytes) -> dict:
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def test_original_layout_has_5d_weights_and_reference_names() -> None:
    original = _load(_write_original(_randomised(0)))
    assert original["kp_detector"]["predictor.decoder.conv.weight"].shape == (4, 8 + 3, 1, 3, 3)
    assert original["generator"]["refinement_module.conv-last.weight"].shape[2:] == (1, 1, 1)
    assert "dense_motion_module.hourglass.encoder.down_blocks.0.norm.running_var" in original["generator"]
    assert original["discriminator"]["down_blocks.0.conv.weight"].shape[2:] == (1, 4, 4)


@pytest.mark.parametrize("drop_batch_counters", [False, True])
def test_convert_load_strict_and_outputs_equal(drop_batch_counters: bool) -> None:
    reference = _randomised(0)
    original = _load(_write_original(reference, drop_batch_counters))
    fresh = _randomised(1)
    assert not torch.equal(_outputs(fresh)["prediction"], _outputs(reference)["prediction"])
    state = convert_monkeynet_checkpoint(original, model=fresh)
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    for key, value in _outputs(reference).items():
        torch.testing.assert_close(_outputs(fresh)[key], value, atol=0, rtol=0, msg=key)


def test_without_discriminator() -> None:
    reference = _randomised(0)
    original = _load(_write_original(reference))
    del original["discriminator"]
    state = convert_monkeynet_checkpoint(original, include_discriminator=False, model=reference)
    assert not any(k.startswith("discriminator.") for k in state)
    result = _randomised(1).load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert all(k.startswith("discriminator.") for k in result.missing_keys)
    with pytest.raises(CheckpointConversionError, match=r"missing sections \['discriminator'\]"):
        convert_monkeynet_checkpoint(original)


def test_unknown_key_is_named() -> None:
    original = _load(_write_original(_randomised(0)))
    original["generator"]["kp_embedding_module.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointConversionError, match=r"generator\.kp_embedding_module\.weight"):
        convert_monkeynet_checkpoint(original)


def test_missing_key_and_shape_mismatch_are_named() -> None:
    model = _randomised(0)
    original = _load(_write_original(model))
    del original["kp_detector"]["predictor.decoder.conv.bias"]
    with pytest.raises(CheckpointConversionError, match=r"missing keys \['keypoint_detector\.hourglass\.decoder\.conv\.bias'\]"):
        convert_monkeynet_checkpoint(original, model=model)
    original = _load(_write_original(model))
    bigger = MonkeyNet(**{**CONFIG, "num_kp": 5})
    with pytest.raises(CheckpointConversionError, match=r"keypoint_detector\.hourglass\.decoder\.conv\.weight: checkpoint \(4, 11, 3, 3\) vs model \(5, 11, 3, 3\)"):
        convert_monkeynet_checkpoint(original, model=bigger)


def test_temporal_kernels_are_refused() -> None:
    original = _load(_write_original(_randomised(0)))
    w = original["kp_detector"]["predictor.decoder.conv.weight"]
    original["kp_detector"]["predictor.decoder.conv.weight"] = w.expand(-1, -1, 3, -1, -1).clone()
    with pytest.raises(CheckpointConversionError, match="time extent 3"):
        convert_monkeynet_checkpoint(original)


def test_not_a_checkpoint() -> None:
    with pytest.raises(CheckpointConversionError, match="missing sections"):
        convert_monkeynet_checkpoint({"state_dict": {}})


def test_kwargs_from_the_vox_config() -> None:
    # monkey-net config/vox.yaml, model_params and loss weights (values as published)
    vox = {
        "model_params": {
            "common_params": {"num_kp": 10, "kp_variance": "matrix", "num_channels": 3},
            "kp_detector_params": {"temperature": 0.1, "block_expansion": 32, "max_features": 1024,
                                   "scale_factor": 0.25, "num_blocks": 5, "clip_variance": 0.001},
            "generator_params": {
                "interpolation_mode": "trilinear", "block_expansion": 32, "max_features": 1024, "num_blocks": 7,
                "num_refinement_blocks": 4,
                "dense_motion_params": {
                    "block_expansion": 32, "max_features": 1024, "num_blocks": 5, "use_mask": True,
                    "use_correction": True, "scale_factor": 0.25,
                    "mask_embedding_params": {"use_heatmap": True, "use_deformed_source_image": True,
                                              "heatmap_type": "difference", "norm_const": 100},
                    "num_group_blocks": 2,
                },
                "kp_embedding_params": {"scale_factor": 0.25, "use_heatmap": True, "norm_const": 100,
                                        "heatmap_type": "difference"},
            },
            "discriminator_params": {"kp_embedding_params": {"norm_const": 100}, "block_expansion": 32,
                                     "max_features": 256, "num_blocks": 4},
        },
        "train_params": {"loss_weights": {"reconstruction": [10, 10, 10, 10, 1], "reconstruction_deformed": 0,
                                          "generator_gan": 1, "discriminator_gan": 1}},
    }
    kwargs = monkeynet_kwargs_from_config(vox)
    assert kwargs["dense_motion"]["use_deformed_source"] is True
    assert kwargs["dense_motion"]["use_difference"] is False
    assert kwargs["dense_motion"]["norm_const"] == 100
    assert kwargs["generator"]["embedding_scale_factor"] == 0.25
    assert kwargs["discriminator"] == {"block_expansion": 32, "max_features": 256, "num_blocks": 4,
                                       "kp_conditioning": True, "kp_norm_const": 100.0}
    model = MonkeyNet(**kwargs)  # the paper's model builds from it
    assert model.dense_motion.mask_embedding.out_channels == 44
    assert model.hparams["keypoint_detector"]["scale_factor"] == 0.25
