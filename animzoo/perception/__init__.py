"""Face-perception models used by the metrics (and available to data annotation and methods).

- :mod:`animzoo.perception.landmarks`: :class:`LandmarkDetector` (stacked hourglass + DSNT,
  trained with the supervision-by-registration loss), :func:`load_landmark_detector`.
- :mod:`animzoo.perception.identity`: :class:`IdentityEmbedder` (timm backbone, ArcFace loss),
  :func:`load_identity_embedder`.

Nothing here imports :mod:`animzoo.methods` (metrics import this package).
"""
