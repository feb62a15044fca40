"""Pretrained models shipped inside the package.

One folder per named model (``monkeynet_synthetic64/``: ``config.json`` + ``model.safetensors``,
written by :func:`animzoo.hub.save_pretrained`) and ``index.json``, the sha256 of each
``model.safetensors`` (regenerate with ``python -m animzoo.hub index``). The table of names is
:data:`animzoo.hub.PRETRAINED`; load one with ``animzoo.load_pretrained(name)``.
"""
