"""Implicit Motion Function (Gao, Li, Chu, Lu, CVPR 2024): motion as latent tokens, aligned by
cross-attention.

``IMF`` is the trainable :class:`~animzoo.methods.base.AnimationModule` (registered as ``"imf"``);
``torch_model`` holds the plain networks. See README.md in this folder.
"""

from animzoo.methods.imf.lightning_model import IMF, interpolate_tokens, token_direction

__all__ = ["IMF", "interpolate_tokens", "token_direction"]
