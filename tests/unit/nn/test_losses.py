"""Tests for animzoo.nn.losses: VGG19 features and perceptual pyramid, GAN losses, feature
matching, thin-plate-spline transforms and the equivariance loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animzoo import weights as W
from animzoo.errors import AnimzooInputError
from animzoo.nn.losses import (
    EquivarianceLoss,
    PerceptualPyramidLoss,
    TPSTransform,
    Vgg19Features,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    random_tps_transform,
)

RELU_INDICES = (1, 6, 11, 20, 29)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def isolated_weights(tmp_path, monkeypatch):
    """No real VGG file can be found: private weights dir, hub dir and registry; no downloads."""
    monkeypatch.setattr(W, "_REGISTRY", dict(W._REGISTRY))
    monkeypatch.setattr(W, "_HASHED", {})
    env_dir = tmp_path / "weights"
    env_dir.mkdir()
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(env_dir))
    monkeypatch.delenv(W.ALLOW_DOWNLOAD_ENV, raising=False)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield env_dir
    torch.hub.set_dir(previous)


@pytest.fixture(scope="module")
def random_vgg(tmp_path_factory):
    """A randomly initialised torchvision VGG19 and its weights saved in torchvision's key layout
    (features only, to keep the file small, plus a classifier key that must be ignored)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.vgg19()  # no weights=...: random init, no download
    features = model.features.eval()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.pth"
    torch.save(state, path)
    return features, path


def _reference_features(features, image):
    x = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    outs = []
    with torch.no_grad():
        for i, layer in enumerate(features):
            x = layer(x)
            if i in RELU_INDICES:
                outs.append(x.clone())
            if i == RELU_INDICES[-1]:
                break
    return outs


def _install_as_vgg19(path, env_dir):
    """Register the random file as "vgg19" (with its own hash) and put it in the weights dir."""
    spec = W.get_weight_spec("vgg19")
    data = path.read_bytes()
    (env_dir / spec.filename).write_bytes(data)
    W.register_weight(
        W.WeightSpec(name="vgg19", filename=spec.filename, sha256=W.sha256_of(env_dir / spec.filename), urls=spec.urls),
        overwrite=True,
    )
    return env_dir / spec.filename


# ---------------------------------------------------------------------------------- VGG19


def test_vgg19_features_load_through_the_resolver(random_vgg, isolated_weights):
    features, path = random_vgg
    installed = _install_as_vgg19(path, isolated_weights)
    vgg = Vgg19Features()  # no path: resolved as the registered "vgg19" file
    assert vgg.weights_file == installed
    image = torch.rand(2, 3, 32, 48)
    outs = vgg(image)
    shapes = [tuple(o.shape) for o in outs]
    assert shapes == [(2, 64, 32, 48), (2, 128, 16, 24), (2, 256, 8, 12), (2, 512, 4, 6), (2, 512, 2, 3)]
    for ours, ref in zip(outs, _reference_features(features, image)):
        torch.testing.assert_close(ours, ref)
    assert all(not p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training


def test_vgg19_features_explicit_path_and_small_inputs(random_vgg):
    _, path = random_vgg
    vgg = Vgg19Features(path)
    assert len(vgg(torch.rand(1, 3, 16, 16))) == 5
    assert [o.shape[-1] for o in vgg(torch.rand(1, 3, 8, 8))] == [8, 4, 2, 1]  # no relu5_1 below 16 px


def test_vgg19_refuses_a_file_that_is_not_vgg19(tmp_path):
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(W.WeightsError, match="bad.pth"):
        Vgg19Features(tmp_path / "bad.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(W.WeightsError, match="not a torchvision VGG19"):
        Vgg19Features(tmp_path / "other.pth")


def test_missing_vgg_file_is_a_clear_error_on_first_use_not_in_the_constructor():
    loss = PerceptualPyramidLoss()  # must not fail, download or look for files
    assert loss._vgg is None
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(W.WeightsNotFoundError) as info:
        loss(x, x)
    message = str(info.value)
    assert isinstance(info.value, AnimzooInputError)
    assert "vgg19-dcbb9e9d.pth" in message and "ANIMZOO_ALLOW_DOWNLOAD=1" in message
    assert "animzoo weights download vgg19" in message


# ---------------------------------------------------------------------------------- perceptual loss


def test_perceptual_pyramid_loss_values_and_gradients(random_vgg):
    _features, path = random_vgg
    loss = PerceptualPyramidLoss(weights=str(path))
    target = torch.rand(2, 3, 64, 64)
    assert loss(target.clone(), target).item() == 0.0
    prediction = (target + 0.1 * torch.randn_like(target)).clamp(0, 1).requires_grad_(True)
    value = loss(prediction, target)
    assert value.item() > 0
    value.backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss._vgg.parameters())
    assert list(loss.parameters()) == [] and list(loss.state_dict()) == []  # VGG stays out of checkpoints


def test_perceptual_loss_equals_an_independent_single_scale_computation(random_vgg):
    features, path = random_vgg
    weights = (1.0, 2.0, 3.0, 4.0, 5.0)
    loss = PerceptualPyramidLoss(scales=(1,), layer_weights=weights, weights=str(path))
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    expected = sum(
        w * (fa - fb).abs().mean()
        for w, fa, fb in zip(weights, _reference_features(features, a), _reference_features(features, b))
    )
    torch.testing.assert_close(loss(a, b), expected)


def _independent_pyramid_level(x: torch.Tensor, scale: float) -> np.ndarray:
    """scipy version of a pyramid level: gaussian blur (sigma = (1/s - 1)/2, truncated at 4 sigma,
    reflected borders), then bilinear resampling with align_corners=True to round(s * size)."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    arr = x.numpy().astype(np.float64)
    if scale == 1:
        return arr
    sigma = (1 / scale - 1) / 2
    blurred = gaussian_filter(arr, sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0)
    h, w = arr.shape[-2:]
    oh, ow = round(h * scale), round(w * scale)
    yy, xx = np.meshgrid(np.linspace(0, h - 1, oh), np.linspace(0, w - 1, ow), indexing="ij")
    out = np.empty(arr.shape[:2] + (oh, ow))
    for b in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            out[b, c] = map_coordinates(blurred[b, c], [yy, xx], order=1)
    return out


@pytest.mark.parametrize("weights", [None, "none"])
def test_pixel_pyramid_without_vgg_matches_an_independent_computation(weights):
    scales = (1, 0.5, 0.25)
    loss = PerceptualPyramidLoss(scales=scales, weights=weights)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    expected = sum(np.abs(_independent_pyramid_level(a, s) - _independent_pyramid_level(b, s)).mean() for s in scales)
    assert loss(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert loss(a, a).item() == 0.0
    assert not loss.uses_vgg


def test_perceptual_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="layer_weights"):
        PerceptualPyramidLoss(layer_weights=(1, 2))
    with pytest.raises(ValueError, match="shape"):
        PerceptualPyramidLoss(weights=None)(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 16, 16))


# ---------------------------------------------------------------------------------- GAN losses


def test_lsgan_losses_on_known_logits():
    fake = [torch.tensor([0.0, 1.0]), torch.tensor([[2.0]])]
    assert lsgan_generator_loss(fake).item() == pytest.approx(0.5 + 1.0)
    assert lsgan_generator_loss(torch.tensor([0.5])).item() == pytest.approx(0.25)
    real = {1: torch.tensor([1.0, 0.0]), 0.5: torch.tensor([0.0])}
    fake_d = {1: torch.tensor([0.0, 1.0]), 0.5: torch.tensor([2.0])}
    # scale 1: mean(0, 1) + mean(0, 1) = 1; scale 0.5: 1 + 4 = 5
    assert lsgan_discriminator_loss(real, fake_d).item() == pytest.approx(6.0)
    with pytest.raises(ValueError, match="scales"):
        lsgan_discriminator_loss({1: torch.zeros(1)}, {2: torch.zeros(1)})


def test_hinge_losses_on_known_logits():
    assert hinge_generator_loss([torch.tensor([1.0, 3.0]), torch.tensor([-1.0])]).item() == pytest.approx(-2.0 + 1.0)
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + f) = 0, 1, 2
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(2.5 / 3 + 1.0)
    with pytest.raises(ValueError):
        hinge_discriminator_loss([real, real], [fake])


def test_feature_matching_on_known_features():
    real = [torch.ones(2, 3, 4, 4, requires_grad=True), torch.zeros(2, 5)]
    fake = [torch.zeros(2, 3, 4, 4, requires_grad=True), torch.full((2, 5), 3.0, requires_grad=True)]
    value = feature_matching_loss(real, fake, [10, 1])
    assert value.item() == pytest.approx(10 * 1.0 + 1 * 3.0)
    value.backward()
    assert real[0].grad is None and fake[0].grad is not None  # real features are detached
    assert feature_matching_loss(real, fake).item() == pytest.approx(4.0)
    assert feature_matching_loss(real, fake, [0, 1]).item() == pytest.approx(3.0)
    multi = feature_matching_loss({1: real, 0.5: real}, {1: fake, 0.5: fake}, [10, 1])
    assert multi.item() == pytest.approx(26.0)
    with pytest.raises(ValueError, match="weights"):
        feature_matching_loss(real, fake, [1, 2, 3])


# ---------------------------------------------------------------------------------- TPS transforms


def test_identity_parameters_give_the_identity():
    image = torch.rand(2, 3, 20, 24)
    points = torch.rand(2, 7, 2) * 2 - 1
    for transform in (random_tps_transform(2, 0.0, 0.0, 5), TPSTransform.identity(2)):
        torch.testing.assert_close(transform.transform_frame(image), image, atol=1e-5, rtol=0)
        torch.testing.assert_close(transform.warp_coordinates(points), points, atol=1e-6, rtol=0)
        jac = transform.jacobian(points)
        torch.testing.assert_close(jac, torch.eye(2).expand_as(jac), atol=1e-6, rtol=0)


def test_random_transform_is_reproducible_and_random():
    a = random_tps_transform(2, 0.05, 0.005, 5, generator=torch.Generator().manual_seed(3))
    b = random_tps_transform(2, 0.05, 0.005, 5, generator=torch.Generator().manual_seed(3))
    c = random_tps_transform(2, 0.05, 0.005, 5, generator=torch.Generator().manual_seed(4))
    p = torch.rand(2, 5, 2) * 2 - 1
    assert torch.equal(a.warp_coordinates(p), b.warp_coordinates(p))
    assert not torch.allclose(a.warp_coordinates(p), c.warp_coordinates(p))
    assert a.kernel_centers.shape == (2, 25, 2)


@pytest.mark.parametrize("seed", range(4))
def test_warped_dot_lands_where_the_transformed_point_says(seed):
    size = 65
    transform = random_tps_transform(1, 0.05, 0.005, 5, generator=torch.Generator().manual_seed(seed))
    transform.affine_weights[:, 0] += torch.tensor([0.08, -0.06])  # make sure the dot moves (~2-3 px)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    cx, cy = 40.0, 22.0
    dot = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.5**2)).view(1, 1, size, size)
    warped = transform.transform_frame(dot, padding_mode="zeros")[0, 0]
    mass = warped / warped.sum()
    landed = torch.stack([(mass * xx).sum(), (mass * yy).sum()])  # pixels
    to_norm = lambda px: px / (size - 1) * 2 - 1
    to_px = lambda nm: (nm + 1) / 2 * (size - 1)
    original = torch.tensor([[[to_norm(cx), to_norm(cy)]]])
    predicted = to_px(transform.inverse_coordinates(original)[0, 0])
    assert (predicted - landed).abs().max() < 1.0, (predicted, landed)
    assert (predicted - torch.tensor([cx, cy])).abs().max() > 1.5  # the transform did move it
    back = to_px(transform.warp_coordinates(to_norm(landed).view(1, 1, 2))[0, 0])
    assert (back - torch.tensor([cx, cy])).abs().max() < 1.0


def test_jacobian_matches_autograd():
    transform = random_tps_transform(3, 0.1, 0.05, 4, generator=torch.Generator().manual_seed(0))
    points = (torch.rand(3, 6, 2) * 2 - 1).requires_grad_(True)
    out = transform.warp_coordinates(points)
    gx = torch.autograd.grad(out[..., 0].sum(), points, retain_graph=True)[0]
    gy = torch.autograd.grad(out[..., 1].sum(), points)[0]
    torch.testing.assert_close(transform.jacobian(points.detach()), torch.stack([gx, gy], dim=-2), atol=1e-5, rtol=1e-4)


def test_from_control_points_hits_the_targets():
    points = torch.rand(2, 6, 2) * 2 - 1
    targets = points + 0.1 * torch.randn(2, 6, 2)
    transform = TPSTransform.from_control_points(points, targets)
    torch.testing.assert_close(transform.warp_coordinates(points), targets, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="batch"):
        transform.transform_frame(torch.rand(3, 1, 8, 8))


# ---------------------------------------------------------------------------------- equivariance


def _centroid_detector(image):
    """An exactly equivariant 'keypoint detector': the intensity centroid (one keypoint)."""
    _b, _, h, w = image.shape
    mass = image.sum(1)
    mass = mass / mass.sum(dim=(1, 2), keepdim=True)
    ys = torch.linspace(-1, 1, h).view(1, h, 1)
    xs = torch.linspace(-1, 1, w).view(1, 1, w)
    return {"value": torch.stack([(mass * xs).sum((1, 2)), (mass * ys).sum((1, 2))], dim=-1).unsqueeze(1)}


def _blob_batch(size=48):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = [(-0.2, 0.1), (0.3, -0.25)]
    blobs = [torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.08**2)) for cx, cy in centres]
    return torch.stack(blobs).unsqueeze(1)


def test_equivariance_loss_small_for_an_equivariant_detector_large_otherwise():
    images = _blob_batch()
    loss = EquivarianceLoss(sigma_affine=0.05, sigma_tps=0.005, points_tps=5, value_weight=1.0)
    gen = torch.Generator().manual_seed(0)
    transform = loss.sample_transform(2, generator=gen)
    good = loss(_centroid_detector, images, transform=transform)
    assert set(good) == {"equivariance_value"}
    assert good["equivariance_value"].item() < 2e-3  # about a tenth of a pixel
    fixed = lambda image: {"value": torch.full((image.shape[0], 1, 2), 0.1)}
    bad = loss(fixed, images, transform=transform)
    assert bad["equivariance_value"].item() > 5 * good["equivariance_value"].item()
    identity = loss(fixed, images, transform=TPSTransform.identity(2))
    assert identity["equivariance_value"].item() == pytest.approx(0.0, abs=1e-7)


def test_equivariance_jacobian_term():
    loss = EquivarianceLoss(value_weight=0.0, jacobian_weight=1.0)
    transform = random_tps_transform(2, 0.1, 0.01, 5, generator=torch.Generator().manual_seed(1))
    kp_t = {"value": torch.rand(2, 3, 2) * 2 - 1}
    eye = torch.eye(2).expand(2, 3, 2, 2)
    # What an equivariant detector reports on T(x): J(Tx) = dT^-1 J(x), with J(x) = I.
    kp_t["jacobian"] = torch.linalg.inv(transform.jacobian(kp_t["value"]))
    kp = {"value": transform.warp_coordinates(kp_t["value"]), "jacobian": eye}
    terms = loss.terms(kp, kp_t, transform)
    assert set(terms) == {"equivariance_jacobian"}
    assert terms["equivariance_jacobian"].item() < 1e-5
    wrong = loss.terms(kp, {"value": kp_t["value"], "jacobian": eye}, transform)
    assert wrong["equivariance_jacobian"].item() > 1e-3
