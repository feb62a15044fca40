"""IMF: shapes through the five networks, the token-space API (encode, decode, interpolate,
directions), the attention cap as a run-time switch, training terms and gradients, self
reconstruction after training, and the input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from animzoo.errors import AnimzooInputError
from animzoo.methods.imf import IMF, interpolate_tokens, token_direction

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32


def small_model(**kwargs) -> IMF:
    """32 px, the synthetic recipe's layout: scales 4, 8, 16 and 32 px (three down blocks, and the
    stem's full-resolution features as the finest scale)."""
    args = {
        "frame_size": SIZE,
        "token_dim": 8,
        "dense_encoder": {"stem_channels": 4, "channels": [8, 16, 16], "num_levels": 4, "num_res": 1},
        "token_encoder": {"block_expansion": 4, "max_features": 16, "mlp_dim": 16, "mlp_layers": 1},
        "token_decoder": {"channels": [16, 16, 8, 4], "convs_per_level": 2},
        "alignment": {"num_blocks": 1, "num_heads": 2, "mlp_dim": 16},
        "frame_decoder": {"num_res": 0},
        "discriminator": {"scales": [1.0, 0.5], "block_expansion": 4, "max_features": 16, "num_blocks": 2},
        "perceptual_weights": "none",
    }
    args.update(kwargs)
    return IMF(**args)


def frames(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_networks_produce_the_documented_scales() -> None:
    torch.manual_seed(0)
    model = small_model().eval()
    f_r = model.dense_encoder(frames())
    assert [tuple(f.shape[1:]) for f in f_r] == [(16, 4, 4), (16, 8, 8), (8, 16, 16), (4, 32, 32)]  # coarse to fine
    m = model.token_decoder(torch.randn(2, 8))
    assert [tuple(x.shape[1:]) for x in m] == [(16, 4, 4), (16, 8, 8), (8, 16, 16), (4, 32, 32)]
    assert model.token_decoder.const.shape == (1, 16, 2, 2)
    out = model.animate({"source": frames(), "driving": frames(seed=1)})
    assert out["prediction"].shape == (2, 3, SIZE, SIZE)
    assert 0 < out["prediction"].min() and out["prediction"].max() < 1


def test_the_default_model_has_the_papers_scales_and_widths() -> None:
    model = IMF(perceptual_weights="none")  # 256 px, supplement Fig. 1
    assert model.dense_encoder.level_channels == [512, 512, 256, 128]  # 8, 16, 32, 64 px
    assert model.dense_encoder(torch.rand(1, 3, 256, 256))[-1].shape == (1, 128, 64, 64)
    assert model.token_decoder.sizes() == [8, 16, 32, 64] and model.token_decoder.channels == [512, 512, 512, 256]
    assert model.token_decoder.const.shape == (1, 512, 4, 4)
    assert 1 + sum(len(level) for level in model.token_decoder.levels) == 13  # styled convolutions
    assert [level.position.shape[1] for level in model.alignment.levels] == [64, 256, 1024, 4096]
    assert all(len(level.blocks) == 4 for level in model.alignment.levels)
    assert model.token_encoder(torch.rand(2, 3, 256, 256)).shape == (2, 32)


def test_the_token_carries_all_of_the_driving_frame() -> None:
    torch.manual_seed(0)
    model = small_model().eval()
    reference, driving = frames(), frames(seed=1)
    with torch.no_grad():
        tokens = model.encode_tokens(driving)
        assert tokens.shape == (2, 8)
        direct = model.animate({"source": reference, "driving": driving})["prediction"]
        via_tokens = model.decode(reference, tokens)["prediction"]
        one_reference = model.decode(reference[:1], tokens)["prediction"]  # one reference, many tokens
        moved = model.token_decoder(tokens + torch.randn(tokens.shape))
        motion = model.token_decoder(tokens)
    torch.testing.assert_close(via_tokens, direct)
    torch.testing.assert_close(one_reference[0], direct[0], atol=1e-5, rtol=1e-5)
    assert all((a - b).abs().mean() > 1e-2 for a, b in zip(moved, motion))  # another token, other motion features


def test_interpolation_runs_between_the_two_frames_tokens() -> None:
    torch.manual_seed(0)
    model = small_model().eval()
    reference, a, b = frames(1), frames(1, seed=1), frames(1, seed=2)
    path = model.interpolate(reference, a, b, steps=5)
    assert path.shape == (5, 3, SIZE, SIZE)
    with torch.no_grad():
        ends = model.decode(reference, model.encode_tokens(torch.cat([a, b])))["prediction"]
    torch.testing.assert_close(path[0], ends[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(path[-1], ends[1], atol=1e-5, rtol=1e-5)
    tokens = interpolate_tokens(torch.zeros(3), torch.tensor([2.0, 4.0, -2.0]), [0.0, 0.5, 1.5])
    torch.testing.assert_close(tokens, torch.tensor([[0.0, 0, 0], [1, 2, -1], [3, 6, -3]]))


def test_token_direction_recovers_a_planted_direction() -> None:
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=g)
    values = torch.linspace(-0.5, 0.5, 200)
    tokens = torch.randn(16, generator=g) + values[:, None] * direction + 0.01 * torch.randn(200, 16, generator=g)
    torch.testing.assert_close(token_direction(tokens, values), direction, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="constant"):
        token_direction(tokens, torch.ones(200))


def test_attention_cap_is_a_run_time_switch_over_the_same_weights() -> None:
    torch.manual_seed(0)
    model = small_model().eval()
    capped = small_model(alignment={"num_blocks": 1, "num_heads": 2, "mlp_dim": 16, "max_attention_resolution": 8}).eval()
    capped.load_state_dict(model.state_dict())  # same parameters
    assert [capped.alignment.patch_size(s) for s in (4, 8, 16, 32)] == [1, 1, 2, 4]
    batch = {"source": frames(), "driving": frames(seed=1)}
    with torch.no_grad():
        full, cut = model.animate(batch)["prediction"], capped.animate(batch)["prediction"]
        capped.alignment.max_attention_resolution = None
        torch.testing.assert_close(capped.animate(batch)["prediction"], full)
    assert (full - cut).abs().max() > 1e-4
    with pytest.raises(ValueError, match="must divide"):
        capped.alignment.max_attention_resolution = 3


def test_generator_step_trains_every_network_and_the_discriminator_step_only_its_own() -> None:
    torch.manual_seed(0)
    model = small_model()
    batch = {"source": frames(), "driving": frames(seed=1)}
    loss, logs, out = model.generator_step(batch)
    assert set(logs) == {"pixel", "perceptual", "gen_gan"}
    torch.testing.assert_close(logs["pixel"], 10 * F.l1_loss(out["prediction"], batch["driving"]))
    loss.backward()
    for name in ("dense_encoder", "token_encoder", "token_decoder", "alignment", "frame_decoder"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    model.zero_grad()
    d_loss, d_logs = model.discriminator_step(batch, out)
    d_loss.backward()
    assert all(p.grad is None for p in model.frame_decoder.parameters())
    assert "disc_gan" in d_logs and d_loss > 0


def test_lr_multipliers_give_matched_parameters_their_own_learning_rate() -> None:
    def adam(params):
        return torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999))

    plain = small_model(optimizer=adam).configure_optimizers()[0]
    assert [g["lr"] for g in plain.param_groups] == [1e-3]  # the paper: one rate
    model = small_model(optimizer=adam, lr_multipliers={"alignment.levels.*.motion_gain": 10.0, "token_decoder.*": 2.0})
    generator, discriminator = model.configure_optimizers()
    rates = {group["lr"]: {id(p) for p in group["params"]} for group in generator.param_groups}
    assert sorted(rates) == [1e-3, 2e-3, 1e-2] and discriminator.param_groups[0]["lr"] == 1e-3
    gains = [level.motion_gain for level in model.alignment.levels]
    assert rates[1e-2] == {id(p) for p in gains}
    assert rates[2e-3] == {id(p) for p in model.token_decoder.parameters()}
    others = {id(p) for p in model.parameters()} - {id(p) for p in model.discriminator.parameters()}
    assert rates[1e-3] == others - rates[1e-2] - rates[2e-3]
    # The gains are scalars: one Adam step moves each by about its group's rate.
    before = torch.stack([g.detach().clone() for g in gains])
    loss, _, _ = model.generator_step({"source": frames(), "driving": frames(seed=1)})
    loss.backward()
    generator.step()
    moved = torch.stack([g.detach() for g in gains]) - before
    torch.testing.assert_close(moved.abs(), torch.full_like(moved, 1e-2), rtol=1e-3, atol=0.0)
    with pytest.raises(AnimzooInputError, match="'alignment.motion_gain' matches no"):
        small_model(optimizer=adam, lr_multipliers={"alignment.motion_gain": 10.0}).configure_optimizers()
    with pytest.raises(ValueError, match="must be > 0"):
        small_model(lr_multipliers={"token_decoder.*": 0.0})


def test_motion_gain_recipe_keys_reach_every_scale() -> None:
    model = small_model(alignment={"num_blocks": 1, "num_heads": 2, "mlp_dim": 16, "motion_gain": 2.0,
                                   "learn_motion_gain": False})
    assert [float(level.motion_gain) for level in model.alignment.levels] == [2.0] * 4
    assert not any("motion_gain" in name for name, _ in model.named_parameters())
    # A fixed gain is not a parameter, so a learning-rate pattern for it has nothing to match.
    with pytest.raises(AnimzooInputError, match="matches no"):
        small_model(alignment={"num_blocks": 1, "num_heads": 2, "mlp_dim": 16, "learn_motion_gain": False},
                    lr_multipliers={"alignment.levels.*.motion_gain": 10.0}).configure_optimizers()


def test_relative_motion_reaches_every_scale_and_frees_the_redraw_from_the_tokens() -> None:
    torch.manual_seed(0)
    model = small_model(alignment={"num_blocks": 1, "num_heads": 2, "mlp_dim": 16, "relative_motion": True,
                                   "motion_gain": 10.0}).eval()
    assert all(level.relative_motion for level in model.alignment.levels)
    reference = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens = model.encode_tokens(reference)
        still = model.decode(reference, tokens)["prediction"]
        for parameter in model.token_decoder.parameters():  # any other motion features
            parameter.add_(torch.randn_like(parameter))
        torch.testing.assert_close(model.decode(reference, tokens)["prediction"], still)
        animated = model.decode(reference, tokens + torch.randn_like(tokens))["prediction"]
    assert (animated - still).abs().max() > 1e-3  # another token does move it (untrained: a little)


def test_fourier_input_moves_the_motion_features_with_the_tokens_affine() -> None:
    from animzoo.methods.imf.torch_model import FourierInput, LatentTokenDecoder

    torch.manual_seed(0)
    layer = FourierInput(token_dim=8, channels=16, size=8)
    tokens = torch.randn(3, 8)
    with torch.no_grad():
        start = layer(tokens)
        torch.testing.assert_close(start[1:], start[:1].expand(2, -1, -1, -1))  # the identity for every token
        layer.affine.bias[2] += 2 / 8  # x moved by one cell of the 8 x 8 grid
        torch.testing.assert_close(layer(tokens)[..., :-1], start[..., 1:])  # the features read one column on
    # Through the styled convolutions: a move of one input cell moves every scale's maps with it
    # (compared away from the borders, where zero padding differs).
    decoder = LatentTokenDecoder(token_dim=8, const_size=8, channels=[8, 8], convs_per_level=2, input_features="fourier")
    with torch.no_grad():
        maps = decoder(tokens)
        decoder.fourier.affine.bias[2] += 2 / 8
        moved = decoder(tokens)
    for before, after in zip(maps, moved):
        width = before.shape[-1]
        step, margin = width // 8, width // 4  # output pixels per input cell; border left out
        inside = after[..., margin:width - margin]
        followed = (inside - before[..., margin + step:width - margin + step]).abs().mean()
        assert followed < 0.2 * (inside - before[..., margin:width - margin]).abs().mean()
    with pytest.raises(ValueError, match="input_features"):
        LatentTokenDecoder(token_dim=8, input_features="noise")


@pytest.mark.parametrize("num_levels", [4, 3])  # finest scale 32 px (the image's) or 16 px (2 x 2 cells)
def test_image_skip_starts_as_the_source_copy_and_lets_the_pixel_loss_reach_the_attention(num_levels: int) -> None:
    # With a sharp identity start (self-logit 32) the frame is the moved reference, whatever the
    # driving frame; without the skip the untrained decoder draws a grey blur. Attention capped at
    # 8 x 8 as in the recipe (16 query channels hold 4 frequencies per axis: enough for 8 x 8).
    channels = [16, 16, 16, 16][:num_levels]
    kwargs = {
        "dense_encoder": {"stem_channels": 4, "channels": [8, 16, 16], "num_levels": num_levels, "num_res": 1},
        "token_decoder": {"channels": channels, "convs_per_level": 2},
        "alignment": {"num_blocks": 1, "num_heads": 2, "mlp_dim": 16, "initial_self_logit": 32.0, "motion_gain": 1.0,
                      "max_attention_resolution": 8},
    }
    # A smooth reference: the little weight left on neighbouring cells changes it little.
    coarse = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    reference = F.interpolate(coarse, size=SIZE, mode="bilinear")
    driving = frames(seed=1)
    torch.manual_seed(0)
    plain = small_model(**kwargs).eval()
    torch.manual_seed(0)
    model = small_model(**kwargs, frame_decoder={"num_res": 0, "image_skip": True}).eval()
    assert model.alignment.levels[-1].passthrough_channels == 3 * (SIZE // model.alignment.sizes[-1]) ** 2
    with torch.no_grad():
        copied = model.animate({"source": reference, "driving": driving})["prediction"]
        drawn = plain.animate({"source": reference, "driving": driving})["prediction"]
    assert F.l1_loss(copied, reference) < 2e-3
    assert F.l1_loss(drawn, reference) > 0.05
    # The pixel loss reaches the finest scale's motion features through the moved pixels alone:
    # with the decoder's convolutions frozen at zero, only the skip carries a gradient back.
    model.train()
    loss = F.l1_loss(model.animate({"source": reference, "driving": driving})["prediction"], driving)
    loss.backward()
    assert model.alignment.levels[-1].motion_gain.grad.abs() > 0
    assert model.frame_decoder.out.weight.grad.abs().sum() > 0  # and the correction starts to learn
    with pytest.raises(ValueError, match="does not split"):
        model.frame_decoder.image_to_level(torch.rand(1, 3, 30, 30), 8)


def test_reference_reconstructs_from_its_own_token_after_training() -> None:
    # Self-reconstruction (the identity motion) is the case IMF must get right. Trained the usual
    # way (random frame pairs of a clip) it becomes near exact: well under the 0.0084 that the
    # clip's frames differ by, and far better than at the start. 16 px keeps it a few seconds.
    from animzoo.data.synthetic import render_clip
    from animzoo.geometry.heads import ProceduralHead, sample_identity, sample_motion

    size = 16
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    params = sample_motion(sample_identity(g)[0], 8, g)
    with torch.no_grad():
        clip, _ = render_clip(ProceduralHead(), params, size, g)  # 8 x 3 x 16 x 16
    model = small_model(
        frame_size=size,
        dense_encoder={"stem_channels": 8, "channels": [8, 16], "num_levels": 3, "num_res": 1},
        token_decoder={"channels": [16, 8, 8], "convs_per_level": 2},
        discriminator={"scales": [1.0], "block_expansion": 4, "max_features": 16, "num_blocks": 2},
        loss_weights={"generator_gan": 0.0, "discriminator_gan": 0.0},
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.5, 0.999))

    def self_l1() -> float:
        model.eval()
        with torch.no_grad():
            prediction = model.decode(clip, model.encode_tokens(clip))["prediction"]
        model.train()
        return F.l1_loss(prediction, clip).item()

    before = self_l1()
    for _ in range(150):
        pick = torch.randint(0, 8, (2, 8), generator=g)
        loss, _, _ = model.generator_step({"source": clip[pick[0]], "driving": clip[pick[1]]})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = self_l1()
    assert after < 0.02 and after < before / 5, (before, after)


def test_frames_of_different_sizes_are_refused_naming_both() -> None:
    model = small_model()
    with pytest.raises(AnimzooInputError, match=r"\(32, 32\).*\(64, 64\).*resize"):
        model.animate({"source": frames(), "driving": torch.rand(2, 3, 64, 64)})
    with pytest.raises(AnimzooInputError, match="built for 32x32.*frame_size=64"):
        model.animate({"source": torch.rand(2, 3, 64, 64), "driving": torch.rand(2, 3, 64, 64)})
    with pytest.raises(AnimzooInputError, match="B x 3 x H x W"):
        model.encode_tokens(torch.rand(3, SIZE, SIZE))
    bad = frames()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(AnimzooInputError, match=r"NaN or inf in batch rows \[1\]"):
        model.encode_tokens(bad)


def test_tokens_of_the_wrong_width_are_refused() -> None:
    model = small_model()
    with pytest.raises(AnimzooInputError, match="N x 8 .*token_dim.*got shape \\(2, 32\\)"):
        model.decode(frames(), torch.randn(2, 32))
    with pytest.raises(AnimzooInputError, match="reference_tokens must be N x 8"):
        model.decode(frames(), torch.randn(2, 8), reference_tokens=torch.randn(2, 4))
    with pytest.raises(AnimzooInputError, match="3 reference frames for 2 tokens"):
        model.decode(frames(3), torch.randn(2, 8))
    with pytest.raises(ValueError, match="widths 8 and 4"):
        interpolate_tokens(torch.zeros(8), torch.zeros(4), [0.5])


def test_inconsistent_configurations_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="one entry per scale"):
        small_model(token_decoder={"channels": [16, 16, 8]})
    with pytest.raises(ValueError, match="multiple of 16"):
        small_model(frame_size=40)
    with pytest.raises(ValueError, match="frame_decoder.channels needs 3"):
        small_model(frame_decoder={"channels": [16, 8]})
    with pytest.raises(ValueError, match="unknown"):
        small_model(alignment={"heads": 2})
