"""Monkey-Net: networks, LightningModule steps, equivariance, dense-motion identity, predictor."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser

from animzoo.geometry.grid import make_coordinate_grid
from animzoo.geometry.keypoints import keypoints_to_gaussian
from animzoo.methods.monkeynet import MonkeyNet, MonkeyNetPredictor
from animzoo.methods.monkeynet.predictor import KeypointSequenceDataset
from animzoo.methods.monkeynet.torch_model import (
    DenseMotionNetwork,
    Generator,
    KeypointDetector,
    MovementEmbedding,
    resize_grid,
)
from animzoo.registry import get_method

K = 5
SMALL = dict(
    num_kp=K,
    keypoint_detector=dict(block_expansion=8, max_features=32, num_blocks=3, scale_factor=0.5),
    dense_motion=dict(block_expansion=8, max_features=32, num_blocks=3, scale_factor=0.5),
    generator=dict(block_expansion=8, max_features=32, num_blocks=3, num_refinement_blocks=2, embedding_scale_factor=0.5),
    discriminator=dict(block_expansion=8, max_features=32),
)


def _model(**overrides) -> MonkeyNet:
    torch.manual_seed(0)
    return MonkeyNet(**{**SMALL, **overrides})


def _batch(b: int = 2, size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"source": torch.rand(b, 3, size, size, generator=g), "driving": torch.rand(b, 3, size, size, generator=g)}


def _kp(b: int, k: int, seed: int = 0, spread: float = 0.7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cov = torch.diag_embed(0.005 + 0.02 * torch.rand(b, k, 2, generator=g))
    return {"value": (torch.rand(b, k, 2, generator=g) * 2 - 1) * spread, "covariance": cov}


def test_registered_and_paper_defaults() -> None:
    assert get_method("monkeynet") is MonkeyNet
    m = MonkeyNet()
    assert m.kp_params["num_blocks"] == 5 and m.kp_params["scale_factor"] == 0.25 and m.kp_params["temperature"] == 0.1
    assert m.gen_params["num_blocks"] == 7 and m.gen_params["num_refinement_blocks"] == 4
    # vox: (1 heatmap + 3 deformed source) x (K + 1) = 44 channels into the dense-motion network
    assert m.dense_motion.mask_embedding.out_channels == 44
    assert m.dense_motion.group_blocks[0].conv.groups == 11
    # generator refinement on 32 + 3 + 10 channels (decoder output + keypoint embedding)
    assert m.generator.refinement[0].conv1.in_channels == 45
    disc = m.discriminator.discs["1"]
    assert [b.conv.out_channels for b in disc.down_blocks] == [64, 128, 256, 256]
    assert disc.down_blocks[0].conv.in_channels == 13


def test_output_shapes_at_64px() -> None:
    m = _model()
    out = m.animate(_batch())
    assert out["prediction"].shape == (2, 3, 64, 64)
    assert 0 <= float(out["prediction"].detach().min()) and float(out["prediction"].detach().max()) <= 1
    assert out["deformed"].shape == (2, 3, 64, 64)
    assert out["flow"].shape == (2, 64, 64, 2)
    assert out["mask"].shape == (2, K + 1, 32, 32)
    torch.testing.assert_close(out["mask"].sum(1), torch.ones(2, 32, 32))
    assert out["keypoints"]["value"].shape == (2, K, 2)
    assert out["keypoints"]["covariance"].shape == (2, K, 2, 2)
    assert out["source_keypoints"]["value"].shape == (2, K, 2)


def test_keypoint_covariances_respect_clip_variance() -> None:
    det = KeypointDetector(num_kp=K, block_expansion=8, max_features=32, num_blocks=3, clip_variance=0.001)
    with torch.no_grad():
        kp = det(torch.rand(2, 3, 32, 32) * 10)
    eig = torch.linalg.eigvalsh(kp["covariance"])
    assert float(eig.min()) >= 0.001 - 1e-6
    assert float(kp["value"].abs().max()) <= 1


def _blob_image(centre: tuple[float, float], size: int = 64) -> torch.Tensor:
    heat = keypoints_to_gaussian(torch.tensor([[centre]]), (size, size), 0.06)[0]
    return heat.expand(3, size, size)[None].clone()


@pytest.mark.parametrize("scale_factor", [1.0, 0.5])
def test_keypoints_move_with_a_translated_input(scale_factor: float) -> None:
    """Equivariance: a detector whose heatmap logits are the image brightness (set through the
    hourglass's input skip, the only path we fix by hand) puts every keypoint on a bright blob;
    translating the image translates the keypoints by the same normalised amount, through the
    anti-aliased downsampling, the softmax and the mean/covariance computation."""
    torch.manual_seed(0)
    det = KeypointDetector(num_kp=3, block_expansion=8, max_features=32, num_blocks=3, scale_factor=scale_factor).eval()
    conv = det.hourglass.decoder.conv
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        # logits_k = 0.4 * (r + g + b): follow the brightness; soft enough that the softmax
        # spreads over a few pixels (sub-pixel keypoints), sharp enough to ignore the background
        conv.weight[:, -3:, 1, 1] = 0.4
    a = det(_blob_image((-0.30, 0.10)))
    b = det(_blob_image((0.25, -0.20)))
    shift = torch.tensor([0.55, -0.30])
    torch.testing.assert_close(b["value"] - a["value"], shift.expand(1, 3, 2), atol=0.004, rtol=0)
    torch.testing.assert_close(a["value"][0, 0], torch.tensor([-0.30, 0.10]), atol=0.004, rtol=0)
    torch.testing.assert_close(a["covariance"], b["covariance"], atol=2e-4, rtol=0)


def test_dense_motion_of_identical_keypoints_is_the_identity() -> None:
    torch.manual_seed(0)
    net = DenseMotionNetwork(num_kp=K, block_expansion=8, max_features=32, num_blocks=3, scale_factor=0.5)
    # make every layer but the zero-initialised last one non-trivial
    with torch.no_grad():
        for p in net.parameters():
            if p is not net.hourglass.decoder.conv.weight and p is not net.hourglass.decoder.conv.bias:
                p.add_(torch.randn_like(p) * 0.1)
    src = torch.rand(2, 3, 64, 64)
    kp = _kp(2, K)
    out = net(src, kp, kp)
    ident = make_coordinate_grid(32, 32).expand(2, 32, 32, 2)
    torch.testing.assert_close(out["grid"], ident, atol=1e-6, rtol=0)
    assert float(out["correction"].abs().max()) == 0.0
    # at initialisation the background mask dominates (bias bg_init = 2 on its logit)
    assert float(out["mask"][:, 0].mean()) > float(out["mask"][:, 1:].mean(1).mean())


def test_dense_motion_is_the_mask_weighted_keypoint_motion() -> None:
    torch.manual_seed(0)
    net = DenseMotionNetwork(num_kp=K, block_expansion=8, max_features=32, num_blocks=3)
    kp_src = _kp(2, K, seed=1)
    kp_drv = {"value": kp_src["value"] - torch.tensor([0.1, -0.05]), "covariance": kp_src["covariance"]}
    out = net(torch.rand(2, 3, 32, 32), kp_drv, kp_src)
    disp = out["grid"] - make_coordinate_grid(32, 32)
    expected = (1 - out["mask"][:, 0])[..., None] * torch.tensor([0.1, -0.05])
    torch.testing.assert_close(disp, expected, atol=1e-6, rtol=0)


def test_generator_with_identical_keypoints_deforms_nothing() -> None:
    torch.manual_seed(0)
    gen = Generator(num_kp=K, block_expansion=8, max_features=32, num_blocks=3, num_refinement_blocks=1,
                    dense_motion_params=dict(block_expansion=8, max_features=32, num_blocks=3))
    src = torch.rand(2, 3, 64, 64)
    kp = _kp(2, K)
    out = gen(src, kp, kp)
    torch.testing.assert_close(out["deformed"], src, atol=1e-5, rtol=0)
    assert out["prediction"].shape == src.shape


def test_identity_init_starts_from_the_deformed_source() -> None:
    torch.manual_seed(0)
    params = dict(num_kp=K, block_expansion=8, max_features=32, num_blocks=3, num_refinement_blocks=2,
                  dense_motion_params=dict(block_expansion=8, max_features=32, num_blocks=3))
    src = torch.rand(2, 3, 64, 64)
    kp = _kp(2, K)
    with torch.no_grad():
        start = Generator(**params, identity_init=True).eval()(src, kp, kp)["prediction"]
        default = Generator(**params).eval()(src, kp, kp)["prediction"]
    torch.testing.assert_close(start, torch.sigmoid(4 * src - 2), atol=1e-5, rtol=0)
    assert float((default - torch.sigmoid(4 * src - 2)).abs().max()) > 0.1


def test_movement_embedding_channels_and_content() -> None:
    emb = MovementEmbedding(K, 3, "matrix", use_heatmap=True, use_difference=True, use_deformed_source=True,
                            add_bg_feature_map=True)
    assert emb.out_channels == (1 + 2 + 3) * (K + 1)
    src = torch.rand(2, 3, 16, 16)
    kp = _kp(2, K)
    out = emb(src, kp, kp).view(2, K + 1, 6, 16, 16)
    assert float(out[:, :, 0].abs().max()) == 0.0  # identical keypoints: zero heatmap difference
    assert float(out[:, :, 1:3].abs().max()) == 0.0  # and zero displacement
    torch.testing.assert_close(out[:, :, 3:], src[:, None].expand(2, K + 1, 3, 16, 16), atol=1e-5, rtol=0)


def test_resize_grid_keeps_the_identity() -> None:
    ident = make_coordinate_grid(16, 16).expand(2, 16, 16, 2)
    torch.testing.assert_close(resize_grid(ident, (64, 48)), make_coordinate_grid(64, 48).expand(2, 64, 48, 2))


def _grads(module: torch.nn.Module) -> dict[str, float]:
    return {n: (0.0 if p.grad is None else float(p.grad.abs().sum())) for n, p in module.named_parameters()}


def test_generator_loss_reaches_every_generator_parameter() -> None:
    m = _model()
    batch = _batch(4)
    opt = torch.optim.Adam(m.generator_parameters(), lr=1e-3)
    # The dense-motion net's last conv starts at zero weights, which blocks the gradient to
    # the layers before it on the first step; after one update every parameter is reachable.
    for _ in range(2):
        opt.zero_grad()
        loss, logs, _ = m.generator_step(batch)
        loss.backward()
        opt.step()
    assert {"rec_image", "rec_layer0", "rec_layer1", "rec_layer2", "rec_layer3", "gen_gan"} <= set(logs)
    for part in (m.keypoint_detector, m.generator.dense_motion, m.generator):
        dead = [n for n, g in _grads(part).items() if g == 0.0]
        assert not dead, f"{type(part).__name__}: no gradient for {dead}"
    gen_ids = {id(p) for p in m.generator_parameters()}
    assert not any(id(p) in gen_ids for p in m.discriminator.parameters())


def test_discriminator_loss_trains_only_the_discriminator() -> None:
    m = _model()
    batch = _batch(2)
    _, _, out = m.generator_step(batch)
    m.zero_grad(set_to_none=True)
    d_loss, logs = m.discriminator_step(batch, out)
    d_loss.backward()
    assert "disc_gan" in logs
    dead = [n for n, g in _grads(m.discriminator).items() if g == 0.0]
    assert not dead, dead
    assert all(p.grad is None for p in m.keypoint_detector.parameters())
    assert all(p.grad is None for p in m.generator.parameters())


def test_animate_with_motion_broadcasts_one_source() -> None:
    m = _model().eval()
    with torch.no_grad():
        src = torch.rand(1, 3, 64, 64)
        kp_s = m.extract_motion(src)
        kp_d = m.extract_motion(torch.rand(3, 3, 64, 64))
        assert set(kp_s) == {"value", "covariance"}
        out = m.animate_with_motion(src, kp_s, kp_d)
        assert out["prediction"].shape == (3, 3, 64, 64)
        # same keypoints as the source: no motion
        same = m.animate_with_motion(src, kp_s, {"value": kp_s["value"]})  # covariance taken from the source
        torch.testing.assert_close(same["deformed"], src, atol=1e-5, rtol=0)


def test_bad_configuration_and_sizes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown MonkeyNet generator keys"):
        MonkeyNet(generator={"num_block": 3})
    with pytest.raises(ValueError, match="num_blocks \\+ 1"):
        MonkeyNet(**SMALL, loss_weights={"reconstruction": [10, 10]})
    with pytest.raises(ValueError, match="detach_kp_discriminator"):
        MonkeyNet(detach_kp_discriminator=False)
    with pytest.raises(ValueError, match="cannot process source of size 60x60"):
        _model().animate(_batch(1, size=60))


def test_lightningcli_types_validate_the_sections() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MonkeyNet, "model")
    cfg = parser.parse_object({"model": {"generator": {"num_blocks": 4, "block_expansion": 16}}})
    assert cfg.model.generator == {"num_blocks": 4, "block_expansion": 16}
    with pytest.raises(Exception):
        parser.parse_object({"model": {"generator": {"num_blockz": 4}}})
    with pytest.raises(Exception):
        parser.parse_object({"model": {"keypoint_detector": {"temperature": "hot"}}})


def test_hyperparameters_are_plain_data() -> None:
    m = _model()
    assert m.hparams["num_kp"] == K
    assert m.hparams["generator"]["num_blocks"] == 3
    assert "optimizer" not in m.hparams


# ---------------------------------------------------------------------- predictor


def _sequences(n: int = 4, t: int = 8, k: int = 3) -> list[dict[str, torch.Tensor]]:
    seqs = []
    for i in range(n):
        time = torch.linspace(0, 1, t)[:, None, None]
        phase = torch.arange(k)[None, :, None] * 0.7 + i
        value = 0.5 * torch.cat([torch.sin(3 * time + phase), torch.cos(2 * time + phase)], -1)
        cov = torch.diag_embed(torch.full((t, k, 2), 0.01) + 0.005 * time.expand(t, k, 2))
        seqs.append({"value": value, "covariance": cov})
    return seqs


def test_predictor_shapes_and_paper_defaults() -> None:
    pred = MonkeyNetPredictor(num_kp=10)
    assert pred.net.rnn.hidden_size == 1024 and pred.net.rnn.num_layers == 1
    assert pred.net.rnn.input_size == 10 * (2 + 4)
    seq = {"value": torch.rand(2, 6, 10, 2) * 2 - 1, "covariance": torch.eye(2).expand(2, 6, 10, 2, 2) * 0.01}
    out = pred(seq)
    assert out["value"].shape == (2, 6, 10, 2) and out["covariance"].shape == (2, 6, 10, 2, 2)
    torch.testing.assert_close(out["value"][:, 0], seq["value"][:, 0])  # the observed frame is kept
    assert float(out["value"].abs().max()) <= 1
    raw = pred.net(pred.masked_input(seq))["covariance"]
    assert float(torch.linalg.eigvalsh(raw).min()) >= -1e-6  # A^T A is positive semi-definite


def test_predictor_overfits_a_tiny_sequence_set() -> None:
    torch.manual_seed(0)
    pred = MonkeyNetPredictor(num_kp=3, hidden_size=32, init_frames=1)
    data = KeypointSequenceDataset(_sequences(n=3, t=6), num_frames=6)
    batch = {k: torch.stack([data[i][k] for i in range(len(data))]) for k in ("value", "covariance")}
    opt = torch.optim.Adam(pred.parameters(), lr=1e-2)
    first = float(pred.loss(batch))
    for _ in range(150):
        opt.zero_grad()
        loss = pred.loss(batch)
        loss.backward()
        opt.step()
    assert float(loss) < 0.1 * first
    assert float(loss) < 0.02
