"""Sparse-to-dense motion transfer (Zhao, Wu, Guo, ICCV Workshops 2021): a face animated by landmarks.

``Sparse2Dense`` is the trainable :class:`~animzoo.methods.base.AnimationModule` (registered as
``"sparse2dense"``); ``torch_model`` holds the plain networks. See README.md in this folder.
"""

from animzoo.methods.sparse2dense.lightning_model import Sparse2Dense

__all__ = ["Sparse2Dense"]
