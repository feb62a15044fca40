"""Monkey-Net (Siarohin et al., CVPR 2019): self-learned keypoints, dense motion, generator.

``MonkeyNet`` is the trainable :class:`~animzoo.methods.base.AnimationModule` (registered as
``"monkeynet"``); ``torch_model`` holds the plain networks; ``MonkeyNetPredictor`` is the
image-to-video keypoint GRU; ``convert_monkeynet_checkpoint`` maps an original checkpoint to
this layout. See README.md in this folder.
"""

from animzoo.methods.monkeynet.convert import convert_monkeynet_checkpoint
from animzoo.methods.monkeynet.lightning_model import MonkeyNet
from animzoo.methods.monkeynet.predictor import MonkeyNetPredictor

__all__ = ["MonkeyNet", "MonkeyNetPredictor", "convert_monkeynet_checkpoint"]
