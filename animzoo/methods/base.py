"""``AnimationModule``: the LightningModule every animzoo method subclasses.

A method implements :meth:`~AnimationModule.animate` (batch -> ``{"prediction", ...}``),
:meth:`~AnimationModule.generator_step` and, when it has a discriminator,
:meth:`~AnimationModule.discriminator_step`. The base class provides everything else and is
shared by all methods:

Training (manual optimisation, ``automatic_optimization = False``)
    Each batch runs one generator step (``generator_step`` -> ``manual_backward`` -> optional
    gradient clipping -> ``step``) and then, when the method has discriminator parameters and
    ``discriminator_step`` does not return ``None``, one discriminator step on the generator's
    output ``out`` (the method detaches what it feeds the discriminator). While the generator
    steps, the discriminator's parameters are frozen (``toggle_optimizer``), so the generator
    loss never changes them.

    ``trainer.global_step`` counts *generator* steps, i.e. training batches: the
    discriminator's optimiser step is not counted, so ``max_steps``, ``val_check_interval``,
    ``sample_every_n_steps`` and checkpoint step numbers mean batches whether or not a method
    has a discriminator (Lightning would otherwise count two steps per batch for GANs).

    Optimisers and schedulers are ``OptimizerCallable`` / ``LRSchedulerCallable`` init
    arguments (``class_path`` / ``init_args`` in a recipe). ``discriminator_optimizer`` and
    ``discriminator_scheduler`` default to the generator's. Schedulers are stepped once per
    epoch, at the end of the training epoch (after that epoch's validation;
    ``ReduceLROnPlateau`` steps on ``val/l1`` when it has been logged). Gradient clipping is
    the module's ``gradient_clip_val`` (norm), applied to each optimiser's parameters
    separately; ``Trainer(gradient_clip_val=...)`` is not available under manual optimisation.

    Every term of ``logs`` is logged as ``train/<name>`` (per step and per epoch); the total
    losses as ``train/loss`` (progress bar) and ``train/d_loss``.

Validation / test / predict (reconstruction protocol)
    Batches come from :class:`~animzoo.data.AnimationDataModule` (chunks of test videos,
    source = frame 0). ``out = self.animate(batch)``; when the batch has ground truth the
    metrics of :func:`animzoo.metrics.AnimationMetrics` are updated and logged at epoch end as
    ``val/<name>`` / ``test/<name>``. Cross-identity batches (test dataloader 1) have no
    ground truth: they only give sample grids. ``predict_step`` returns
    ``{"prediction", "video_id", "frame_index", "num_frames"}`` (on the CPU);
    :class:`VideoPredictionWriter` assembles them into one video per test video.

Sample grids (source | driving | prediction | keypoint overlay | deformed | flow | occlusion,
one row per sample; the optional columns appear when ``animate`` returns them) go to the logger
every ``sample_every_n_steps`` training batches and for the first batch of each validation /
test dataloader: ``WandbLogger.log_image``, TensorBoard ``add_image``, and PNG files under
``<log_dir>/samples/`` for ``CSVLogger``; other loggers get none.

The base class does not override ``on_after_batch_transfer``: the datamodule's device-side
augmentation hook must run. Modules hold no device code, seed nothing and download nothing in
their constructors.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from animzoo.errors import AnimzooInputError

__all__ = [
    "AnimationModule",
    "VideoPredictionWriter",
    "default_optimizer",
    "draw_points",
    "flow_to_rgb",
    "log_image",
    "make_sample_grid",
    "merge_params",
    "nonfinite_rows",
]

# Metrics of the cross-identity test set: no ground truth of the source identity exists there.
CROSS_IDENTITY_METRICS = frozenset({"csim", "fid"})
CROSS_IDENTITY_KEYS = ("csim_src", "fid")  # csim_src@, csim_src_detected@, fid@, fid_frames@
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".avi", ".mkv", ".gif"})
OPTIMIZER_ARGS = ("optimizer", "discriminator_optimizer", "scheduler", "discriminator_scheduler")


def merge_params(defaults: Mapping[str, Any], given: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """A sub-network's recipe keys over its defaults: unknown keys are refused (naming ``what``,
    e.g. ``"MonkeyNet generator"``, and the valid keys); nested dicts merge key by key."""
    given = dict(given or {})
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {what} keys {sorted(unknown)}; valid keys: {sorted(defaults)}")
    merged = {**defaults, **given}
    for key, default in defaults.items():
        if isinstance(default, Mapping) and isinstance(given.get(key), Mapping):
            merged[key] = merge_params(default, given[key], f"{what}.{key}")
    return merged


def nonfinite_rows(values: Tensor) -> list[int]:
    """Indices along dim 0 of ``values`` (B x ...) that hold NaN or inf (for input checks that
    name the bad batch rows)."""
    return (~torch.isfinite(values).reshape(values.shape[0], -1).all(dim=1)).nonzero().flatten().tolist()


def default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam, lr 2e-4, betas (0.5, 0.999): the optimiser of first-order-model / Monkey-Net."""
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


def _as_bool(value: Any) -> bool:
    if isinstance(value, Tensor):
        return bool(value.all())
    if isinstance(value, (list, tuple)):
        return all(bool(v) for v in value)
    return bool(value)


@contextlib.contextmanager
def _uncounted_step(optimizer: Any) -> Iterator[None]:
    """Run an optimiser step that Lightning does not count in ``global_step``.

    Lightning's manual-optimisation loop counts steps through the hooks it installs on each
    ``LightningOptimizer`` (``_on_before_step`` / ``_on_after_step``); they are swapped for
    no-ops around the discriminator step. (When a future Lightning drops these hooks, the step
    is simply counted, as Lightning does by default.)
    """
    before = getattr(optimizer, "_on_before_step", None)
    after = getattr(optimizer, "_on_after_step", None)
    if before is None or after is None:
        yield
        return
    optimizer._on_before_step = lambda: None
    optimizer._on_after_step = lambda: None
    try:
        yield
    finally:
        optimizer._on_before_step = before
        optimizer._on_after_step = after


class AnimationModule(LightningModule):
    """Base of every animation method (see the module docstring for the shared behaviour).

    Args:
        optimizer: generator optimiser factory (default Adam 2e-4, betas (0.5, 0.999)).
        discriminator_optimizer: discriminator optimiser factory (default: ``optimizer``).
        scheduler: learning-rate scheduler factory for the generator optimiser (default: none).
        discriminator_scheduler: same for the discriminator (default: ``scheduler``).
        scheduler_interval: step the schedulers once per ``"epoch"`` (milestones in epochs) or
            once per training ``"step"`` (milestones in iterations, as papers that count
            iterations state them). ReduceLROnPlateau is always stepped per epoch.
        gradient_clip_val: clip the gradient norm of each optimiser's parameters to this
            value (default: no clipping).
        sample_every_n_steps: log a sample grid every this many training batches (0: never).
        num_samples: rows of a sample grid.
        val_metrics: the metrics of validation during ``fit`` (names, or ``{name: kwargs}``;
            default ``l1``, ``psnr``, ``ssim``: cheap, so validation stays fast).
        test_metrics: the metrics of ``test`` / ``validate`` (default: the whole suite,
            :data:`animzoo.metrics.DEFAULT_TEST_METRICS`, with the dlib face backends; recipes
            on synthetic data choose the animzoo backends, e.g. ``{akd: {backend: animzoo70}}``).
        init_weights: start ``fit`` from these weights: a ``.ckpt``, a pretrained folder or name
            of the same method and sizes (:func:`animzoo.hub.load_weights_into`). Fine-tuning:
            the optimisers and schedules start afresh, unlike ``--ckpt_path``, which resumes a
            run (and wins when both are given).
        lr_multipliers: ``{pattern: factor}``: generator parameters whose name (as in
            ``named_parameters()``) matches the ``fnmatch`` pattern learn at the optimiser's
            learning rate times ``factor``, in their own parameter group (the first matching
            pattern wins), e.g. ``{"alignment.levels.*.motion_gain": 10}``. A pattern that
            matches no parameter is refused (a typo would silently train at the plain rate).
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    method_name: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        optimizer: OptimizerCallable = default_optimizer,
        discriminator_optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        discriminator_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        gradient_clip_val: float | None = None,
        sample_every_n_steps: int = 250,
        num_samples: int = 4,
        val_metrics: list[str] | dict[str, dict[str, Any]] | None = None,
        test_metrics: list[str] | dict[str, dict[str, Any]] | None = None,
        init_weights: str | None = None,
        lr_multipliers: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        # Collects the init args of the whole subclass chain; the factories are not plain data
        # (LightningCLI stores their class_path / init_args in the checkpoint instead).
        self.save_hyperparameters(ignore=list(OPTIMIZER_ARGS))
        self.automatic_optimization = False
        self.optimizer_factory = optimizer
        self.discriminator_optimizer_factory = discriminator_optimizer
        self.scheduler_factory = scheduler
        self.discriminator_scheduler_factory = discriminator_scheduler
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.scheduler_interval = scheduler_interval
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ValueError(f"gradient_clip_val must be > 0 or None, got {gradient_clip_val}")
        self.gradient_clip_val = gradient_clip_val
        if sample_every_n_steps < 0 or num_samples < 1:
            raise ValueError("sample_every_n_steps must be >= 0 and num_samples >= 1")
        self.sample_every_n_steps = int(sample_every_n_steps)
        self.num_samples = int(num_samples)
        self.val_metrics_config = val_metrics
        self.test_metrics_config = test_metrics
        self.init_weights = init_weights
        self.lr_multipliers = dict(lr_multipliers or {})
        for pattern, factor in self.lr_multipliers.items():
            if not float(factor) > 0:
                raise ValueError(f"lr_multipliers[{pattern!r}] must be > 0, got {factor}")
        # Metric collections live outside the module tree (see _set_collection): metric
        # backbones (Inception, AlexNet, detectors) must not enter checkpoints.
        self._collections: dict[str, Any] = {}
        self._video_names: dict[int, str] = {}
        self.test_results: dict[str, float] = {}
        self.test_status: dict[str, str] = {}
        self.test_per_video: dict[str, dict[str, float]] = {}
        self._plateau_warned = False

    # ------------------------------------------------------------------ method API

    def animate(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Animate the batch's sources by its driving signal.

        Returns at least ``"prediction"`` (``B x 3 x H x W`` in [0, 1]); may add
        ``"deformed"``, ``"flow"`` (``B x H x W x 2`` sampling grid or ``B x 2 x H x W``
        displacement), ``"occlusion"`` (``B x 1 x H x W``), ``"keypoints"`` (``{"value": B x K
        x 2}`` of the driving frame) and ``"source_keypoints"`` for the sample grids.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement animate(batch)")

    def generator_step(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
        """``(loss, logs, out)``: the generator's total loss, its terms (logged as
        ``train/<name>``) and the output of :meth:`animate` (given to the discriminator step)."""
        raise NotImplementedError(f"{type(self).__name__} must implement generator_step(batch)")

    def discriminator_step(
        self, batch: dict[str, Any], out: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]] | None:
        """``(loss, logs)`` of the discriminator on ``batch`` and the generator output ``out``
        (detach what comes from the generator), or ``None`` when there is no discriminator."""
        return None

    def image_discriminator_step(
        self, batch: dict[str, Any], out: dict[str, Any], weight: float, gan_mode: Literal["hinge", "lsgan"]
    ) -> tuple[Tensor, dict[str, Tensor]] | None:
        """The discriminator step of a method whose ``self.discriminator`` judges images alone:
        ``weight`` x the ``gan_mode`` loss of the driving frames (real) against the detached
        prediction (fake), logged as ``disc_gan``; None when ``weight`` is 0."""
        from animzoo.nn.losses import hinge_discriminator_loss, lsgan_discriminator_loss

        if not weight:
            return None
        _, fake = self.discriminator(out["prediction"].detach())
        _, real = self.discriminator(batch["driving"])
        gan = hinge_discriminator_loss if gan_mode == "hinge" else lsgan_discriminator_loss
        loss = float(weight) * gan(real, fake)
        return loss, {"disc_gan": loss.detach()}

    def discriminator_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters updated by the discriminator optimiser (default: ``self.discriminator``'s)."""
        discriminator = getattr(self, "discriminator", None)
        if isinstance(discriminator, nn.Module):
            return discriminator.parameters()
        return []

    def generator_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters updated by the generator optimiser (default: all but the discriminator's)."""
        excluded = {id(p) for p in self.discriminator_parameters()}
        return [p for p in self.parameters() if id(p) not in excluded]

    # Optional motion API (methods with explicit motion); used by animzoo.animate.Animator.
    def extract_motion(self, frames: Tensor) -> dict[str, Tensor]:
        """``B x 3 x H x W`` -> ``{"value": B x K x 2, ...}`` (methods with explicit motion)."""
        raise NotImplementedError(f"{type(self).__name__} has no explicit motion representation")

    def animate_with_motion(
        self, source: Tensor, source_motion: dict[str, Tensor], driving_motion: dict[str, Tensor]
    ) -> dict[str, Any]:
        """Animate ``source`` with already extracted (e.g. relative) motion."""
        raise NotImplementedError(f"{type(self).__name__} has no explicit motion representation")

    # ------------------------------------------------------------------ optimisers

    def _trainable(self, params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        seen: set[int] = set()
        result = []
        for p in params:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                result.append(p)
        return result

    def configure_optimizers(self) -> Any:
        """Generator optimiser (and discriminator optimiser when there are discriminator
        parameters), each with its scheduler when one is configured."""
        name = type(self).__name__
        g_params = self._trainable(self.generator_parameters())
        if not g_params:
            raise AnimzooInputError(
                f"{name} has no trainable parameters, so there is nothing to fit; evaluate it "
                f"directly (no checkpoint needed): animzoo test --model {name} --config RECIPE"
            )
        optimizers = [self._generator_optimizer(g_params)]
        d_params = self._trainable(self.discriminator_parameters())
        if d_params:
            factory = self.discriminator_optimizer_factory or self.optimizer_factory
            optimizers.append(factory(d_params))
        schedulers = []
        if self.scheduler_factory is not None:
            schedulers.append(self.scheduler_factory(optimizers[0]))
        if len(optimizers) > 1:
            factory = self.discriminator_scheduler_factory or self.scheduler_factory
            if factory is not None:
                schedulers.append(factory(optimizers[1]))
        if schedulers:
            return optimizers, schedulers
        return optimizers

    def _generator_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The generator optimiser; parameters matched by ``lr_multipliers`` get their own
        parameter group at the recipe's learning rate times their factor."""
        if not self.lr_multipliers:
            return self.optimizer_factory(params)
        names = {id(p): name for name, p in self.named_parameters()}
        factors: dict[int, float] = {}
        for pattern, factor in self.lr_multipliers.items():
            matched = [p for p in params if fnmatch.fnmatchcase(names.get(id(p), ""), pattern)]
            if not matched:
                raise AnimzooInputError(
                    f"{type(self).__name__}: lr_multipliers pattern {pattern!r} matches no trainable generator "
                    f"parameter; names look like {sorted(names.values())[:3]} (see named_parameters())"
                )
            for p in matched:
                factors.setdefault(id(p), float(factor))
        groups: dict[float, list[nn.Parameter]] = {}
        for p in params:
            groups.setdefault(factors.get(id(p), 1.0), []).append(p)
        # Groups without their own "lr" take the recipe's; scaled before any scheduler reads them.
        optimizer = self.optimizer_factory([{"params": ps} for ps in groups.values()])
        for group, factor in zip(optimizer.param_groups, groups):
            group["lr"] *= factor
        return optimizer

    def _optimizer_pair(self) -> tuple[Any, Any | None]:
        optimizers = self.optimizers()
        if not isinstance(optimizers, (list, tuple)):
            optimizers = [optimizers]
        return optimizers[0], (optimizers[1] if len(optimizers) > 1 else None)

    def _clip(self, optimizer: Any) -> None:
        if self.gradient_clip_val is not None:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm"
            )

    # ------------------------------------------------------------------ training

    def _log_terms(self, logs: dict[str, Tensor], batch_size: int) -> None:
        for key, value in logs.items():
            value = value.detach() if isinstance(value, Tensor) else torch.tensor(float(value))
            self.log(f"train/{key}", value.float(), on_step=True, on_epoch=True, batch_size=batch_size)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        g_opt, d_opt = self._optimizer_pair()
        batch_size = int(batch["driving"].shape[0])
        step = self.global_step  # generator steps done before this batch

        self.toggle_optimizer(g_opt)  # freezes the discriminator during the generator step
        try:
            loss, logs, out = self.generator_step(batch)
            g_opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self._clip(g_opt)
            g_opt.step()
        finally:
            self.untoggle_optimizer(g_opt)
        self.log("train/loss", loss.detach().float(), on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch_size)
        self._log_terms(logs, batch_size)

        if d_opt is not None:
            self.toggle_optimizer(d_opt)
            try:
                result = self.discriminator_step(batch, out)
                if result is not None:
                    d_loss, d_logs = result
                    d_opt.zero_grad(set_to_none=True)
                    self.manual_backward(d_loss)
                    self._clip(d_opt)
                    with _uncounted_step(d_opt):
                        d_opt.step()
                    self.log("train/d_loss", d_loss.detach().float(), on_step=True, on_epoch=True,
                             batch_size=batch_size)
                    self._log_terms(d_logs, batch_size)
            finally:
                self.untoggle_optimizer(d_opt)

        if self.scheduler_interval == "step":
            self._step_schedulers(per_epoch=False)
        if self.sample_every_n_steps and step % self.sample_every_n_steps == 0:
            self._log_samples("train/samples", batch, out, step)
        return loss.detach()

    def on_train_epoch_end(self) -> None:
        self._step_schedulers(per_epoch=True)

    def _step_schedulers(self, per_epoch: bool) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        if not isinstance(schedulers, (list, tuple)):
            schedulers = [schedulers]
        for scheduler in schedulers:
            plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
            if plateau != per_epoch and self.scheduler_interval == "step":
                continue  # per-step mode: plateau schedulers at epoch ends, the others every step
            if not per_epoch:
                scheduler.step()
            elif plateau:
                metric = self.trainer.callback_metrics.get("val/l1")
                if metric is None:
                    if not self._plateau_warned:
                        warnings.warn("ReduceLROnPlateau needs val/l1, which is not logged yet; not stepped",
                                      stacklevel=2)
                        self._plateau_warned = True
                    continue
                scheduler.step(metric)
            else:
                scheduler.step()

    # ------------------------------------------------------------------ evaluation

    def configure_metrics(self, stage: str) -> Any:
        """The metric collection of ``stage`` (``"val"`` during fit, ``"test"`` for test and
        validate, ``"cross"`` for the cross-identity test set); override to change the suite.

        The cross-identity collection keeps the metrics that need no ground truth of the
        source's identity: CSIM against the source, FID and the smoothness of the prediction.
        """
        from animzoo.metrics import (
            DEFAULT_TEST_METRICS,
            DEFAULT_VAL_METRICS,
            AnimationMetrics,
        )

        config = self.val_metrics_config if stage == "val" else self.test_metrics_config
        if config is None:
            config = DEFAULT_VAL_METRICS if stage == "val" else DEFAULT_TEST_METRICS
        if isinstance(config, dict):
            names, kwargs = list(config), {k: dict(v or {}) for k, v in config.items()}
        else:
            names, kwargs = list(config), {}
        if stage == "cross":
            names = [n for n in names if n in CROSS_IDENTITY_METRICS]
            kwargs = {k: v for k, v in kwargs.items() if k in names}
        return AnimationMetrics(metrics=names, metric_kwargs=kwargs)

    def _collection(self, stage: str) -> Any:
        """The (lazily built) collection of ``stage``, on this module's device."""
        collection = self._collections.get(stage)
        if collection is None:
            collection = self.configure_metrics(stage)
            self._collections[stage] = collection
        return collection.to(self.device)

    def setup(self, stage: str) -> None:
        # Built here, not in __init__, so that no constructor loads metric backbones.
        if stage == "fit":
            if self.init_weights:
                # Before Lightning restores a --ckpt_path (which therefore wins), on every rank.
                from animzoo.hub import load_weights_into

                load_weights_into(self, self.init_weights)
            self._collection("val")
        elif stage in ("validate", "test"):
            self._collection("test")

    def _stage_collection(self, stage: str, dataloader_idx: int, batch: dict[str, Any]) -> Any:
        if batch.get("mode") == "cross" or not _as_bool(batch.get("has_ground_truth", True)):
            return self._collection("cross") if stage != "val" else None
        if stage == "val" and self.trainer.state.fn == "validate":
            stage = "test"  # `animzoo validate` reports the whole suite, like test
        return self._collection(stage)

    def _evaluation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int, stage: str
    ) -> dict[str, Any]:
        """Animate the batch, update the stage's metrics and log the first batch's samples;
        returns ``animate``'s output (subclasses add their own evaluation terms from it)."""
        from animzoo.metrics.pixel import video_key

        out = self.animate(batch)
        collection = self._stage_collection(stage, dataloader_idx, batch)
        if collection is not None:
            collection.update(out["prediction"], batch["driving"], batch["video_id"], batch["frame_index"],
                              source=batch["source"])
            self._video_names.update({video_key(v): v for v in batch["video_id"]})
        if batch_idx == 0 and not self.trainer.sanity_checking:
            tag = f"{stage}/samples" + ("" if dataloader_idx == 0 else f"_{batch.get('mode', dataloader_idx)}")
            self._log_samples(tag, batch, out, self.global_step)
        return out

    def _gathered_video_names(self) -> dict[int, str]:
        names = dict(self._video_names)
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, names)
            for part in gathered:
                names.update(part)
        return names

    def _finish_metrics(self, stages: dict[str, str]) -> tuple[dict[str, float], dict[str, str], dict[str, dict[str, float]]]:
        """Compute, log and reset the collections of ``stages`` (``{collection: log prefix}``).

        Returns ``(results, status, per_video)``; ``per_video`` maps video ids to
        ``{metric: value}`` (reconstruction and cross-identity rows are told apart by their
        prefixed keys).
        """
        from animzoo.metrics import metric_status, per_video_results

        results: dict[str, float] = {}
        status: dict[str, str] = {}
        per_video: dict[str, dict[str, float]] = {}
        names = None
        for stage, prefix in stages.items():
            collection = self._collections.get(stage)
            if collection is None or not any(getattr(m, "update_count", 0) > 0 for m in collection.values()):
                continue
            values = {f"{prefix}{k}": v for k, v in collection.compute().items()
                      if stage != "cross" or k.startswith(CROSS_IDENTITY_KEYS)}
            # Values are already reduced over ranks by torchmetrics; sync_dist only averages
            # identical numbers (and keeps Lightning's epoch-level logging consistent).
            self.log_dict({k: v.float() for k, v in values.items()}, sync_dist=True, add_dataloader_idx=False)
            results.update({k: float(v) for k, v in values.items()})
            status.update({f"{prefix}{k}": v for k, v in metric_status(collection).items()})
            if names is None:
                names = self._gathered_video_names()
            for video, row in per_video_results(collection).items():
                name = names.get(video, f"{video:#x}")
                per_video.setdefault(name, {}).update({f"{prefix}{k}": v for k, v in row.items()
                                                       if stage != "cross" or k.startswith(CROSS_IDENTITY_KEYS)})
            collection.reset()
        self._video_names = {}
        return results, status, per_video

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, batch_idx, dataloader_idx, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.state.fn == "validate":
            self.test_results, self.test_status, self.test_per_video = self._finish_metrics(
                {"test": "val/", "cross": "val/cross/"})
        else:
            self._finish_metrics({"val": "val/"})

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, batch_idx, dataloader_idx, "test")

    def on_test_epoch_end(self) -> None:
        self.test_results, self.test_status, self.test_per_video = self._finish_metrics(
            {"test": "test/", "cross": "test/cross/"})

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        out = self.animate(batch)
        result = {
            "prediction": out["prediction"].detach().float().clamp(0, 1).cpu(),
            "video_id": list(batch["video_id"]),
            "frame_index": torch.as_tensor(batch["frame_index"]).cpu(),
        }
        if "num_frames" in batch:
            result["num_frames"] = torch.as_tensor(batch["num_frames"]).cpu()
        return result

    # ------------------------------------------------------------------ samples

    def _log_samples(self, tag: str, batch: dict[str, Any], out: dict[str, Any], step: int) -> None:
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero or not trainer.loggers:
            return
        with torch.no_grad():
            grid = make_sample_grid(batch, out, self.num_samples)
        for logger in trainer.loggers:
            log_image(logger, tag, grid, step)


# ---------------------------------------------------------------------- sample grids


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """``h`` in [0, 1), ``s``, ``v`` in [0, 1] (same shape) -> ``3 x ...`` RGB."""
    i = torch.floor(h * 6) % 6
    f = h * 6 - torch.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = torch.zeros((3, *h.shape), dtype=h.dtype, device=h.device)
    for k, (r, g, b) in enumerate(table):
        mask = i == k
        rgb[0][mask], rgb[1][mask], rgb[2][mask] = r[mask], g[mask], b[mask]
    return rgb


def _palette(n: int, device: torch.device) -> Tensor:
    h = torch.arange(n, dtype=torch.float32, device=device) / max(n, 1)
    one = torch.ones_like(h)
    return _hsv_to_rgb(h, one, one).T  # n x 3


def draw_points(image: Tensor, points: Tensor, radius: int | None = None) -> Tensor:
    """Draw ``K x 2`` normalised points (x, y in [-1, 1]) as coloured squares on ``3 x H x W``."""
    image = image.clone()
    _, h, w = image.shape
    r = radius if radius is not None else max(1, min(h, w) // 64)
    colors = _palette(points.shape[0], image.device).to(image.dtype)
    xs = ((points[:, 0].float() + 1) / 2 * (w - 1)).round().long()
    ys = ((points[:, 1].float() + 1) / 2 * (h - 1)).round().long()
    for k in range(points.shape[0]):
        x, y = int(xs[k]), int(ys[k])
        if not (math.isfinite(points[k, 0].item()) and -r <= x < w + r and -r <= y < h + r):
            continue
        image[:, max(0, y - r): y + r + 1, max(0, x - r): x + r + 1] = colors[k].view(3, 1, 1)
    return image


def flow_to_rgb(flow: Tensor) -> Tensor:
    """A flow as colours (direction = hue, magnitude / max magnitude = saturation).

    ``flow`` is ``H x W x 2`` (a sampling grid: the identity is subtracted) or ``2 x H x W``
    (a displacement); returns ``3 x H x W``.
    """
    if flow.shape[-1] == 2 and flow.dim() == 3 and flow.shape[0] != 2:
        from animzoo.geometry.grid import make_coordinate_grid

        ident = make_coordinate_grid(flow.shape[0], flow.shape[1], dtype=flow.dtype, device=flow.device)
        disp = (flow - ident).permute(2, 0, 1)
    else:
        disp = flow
    disp = disp.float()
    magnitude = disp.norm(dim=0)
    angle = (torch.atan2(disp[1], disp[0]) / (2 * math.pi)) % 1.0
    saturation = magnitude / magnitude.max().clamp_min(1e-8)
    return _hsv_to_rgb(angle, saturation, torch.ones_like(angle))


def _points(value: Any) -> Tensor | None:
    if isinstance(value, dict):
        value = value.get("value")
    return value if isinstance(value, Tensor) and value.dim() == 3 and value.shape[-1] == 2 else None


def make_sample_grid(batch: dict[str, Any], out: dict[str, Any], num_samples: int = 4) -> Tensor:
    """A ``3 x H' x W'`` image: one row per sample (evenly spread over the batch), columns
    source | driving | prediction, then the keypoint overlay (driving keypoints on the driving
    frame, or the batch's driving landmarks), ``deformed``, ``flow`` and ``occlusion`` when
    present."""
    source, driving, prediction = batch["source"], batch["driving"], out["prediction"]
    b, _, h, w = prediction.shape
    n = min(num_samples, b)
    rows = torch.linspace(0, b - 1, n).round().long().unique().tolist()

    def fit(img: Tensor) -> Tensor:
        img = img.detach().float()
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        if img.shape[-2:] != (h, w):
            img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=True)[0]
        return img.clamp(0, 1)

    keypoints = _points(out.get("keypoints"))
    source_keypoints = _points(out.get("source_keypoints"))
    if keypoints is None:
        keypoints = _points(batch.get("driving_landmarks"))
        source_keypoints = _points(batch.get("source_landmarks")) if keypoints is not None else None
    flow = out.get("flow")
    flow = flow if isinstance(flow, Tensor) and flow.dim() == 4 else None

    tiles = []
    for i in rows:
        row = [fit(source[i]), fit(driving[i]), fit(prediction[i])]
        if keypoints is not None:
            if source_keypoints is not None:
                row[0] = draw_points(row[0], source_keypoints[i].detach())
            row.append(draw_points(fit(driving[i]), keypoints[i].detach()))
        for key in ("deformed",):
            value = out.get(key)
            if isinstance(value, Tensor) and value.dim() == 4 and value.shape[1] in (1, 3):
                row.append(fit(value[i]))
        if flow is not None:
            row.append(fit(flow_to_rgb(flow[i].detach())))
        occlusion = out.get("occlusion")
        if isinstance(occlusion, Tensor) and occlusion.dim() == 4 and occlusion.shape[1] == 1:
            row.append(fit(occlusion[i]))
        tiles.append(torch.cat(row, dim=2))
    return torch.cat(tiles, dim=1).cpu()


def log_image(logger: Any, tag: str, image: Tensor, step: int) -> bool:
    """Send a ``3 x H x W`` image in [0, 1] to ``logger``; returns whether it was logged.

    wandb: ``log_image``; TensorBoard: ``add_image``; CSV: ``<log_dir>/samples/<tag>-<step>.png``
    (``/`` in ``tag`` becomes ``_``); any other logger: nothing.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    if isinstance(logger, WandbLogger):
        array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        logger.log_image(key=tag, images=[array], step=step)
        return True
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, image.clamp(0, 1), global_step=step)
        return True
    if isinstance(logger, CSVLogger):
        from animzoo.io import write_image

        folder = Path(logger.log_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        write_image(folder / f"{tag.replace('/', '_')}-{step:07d}.png", image)
        return True
    return False


# ---------------------------------------------------------------------- predict output


class VideoPredictionWriter(Callback):
    """Write the predictions of ``animzoo predict`` as one video per test video.

    Frames arrive in chunks (possibly on several ranks, possibly repeated by a distributed
    sampler); they are collected per ``video_id`` and de-duplicated by frame index. A video is
    written (``<output_dir>/<video_id>.<suffix>``, :func:`animzoo.io.write_video`) as soon as
    all its frames are there, so memory holds only unfinished videos; at the end of the epoch
    the unfinished parts of all ranks are gathered on rank 0 and written (with a warning when
    frames are missing, e.g. under ``limit_predict_batches``).

    Args:
        output_dir: folder of the videos (created).
        fps: frame rate of the written videos.
        suffix: container, ``.mp4`` (default), ``.webm``, ``.gif``, ...
    """

    def __init__(self, output_dir: str = "predictions", fps: float = 25.0, suffix: str = ".mp4") -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.fps = float(fps)
        self.suffix = suffix if suffix.startswith(".") else f".{suffix}"
        self._frames: dict[str, dict[int, np.ndarray]] = {}
        self._expected: dict[str, int] = {}
        self._done: set[str] = set()
        self.written: list[Path] = []

    def _path(self, video_id: str) -> Path:
        safe = video_id.replace("/", "_").replace("\\", "_")
        if Path(safe).suffix.lower() in VIDEO_SUFFIXES:  # video ids keep their file suffix: "a.mp4" -> "a.mp4", not "a.mp4.mp4"
            safe = safe[: -len(Path(safe).suffix)]
        return self.output_dir / f"{safe}{self.suffix}"

    def _write(self, video_id: str) -> None:
        from animzoo.io import write_video

        frames = self._frames.pop(video_id)
        expected = self._expected.pop(video_id, None)
        if expected is not None and len(frames) < expected:
            warnings.warn(f"{video_id}: writing {len(frames)} of {expected} frames", stacklevel=2)
        order = sorted(frames)
        self._done.add(video_id)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.written.append(write_video(self._path(video_id), np.stack([frames[i] for i in order]), fps=self.fps))

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._frames, self._expected, self._done, self.written = {}, {}, set(), []

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                             batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        from animzoo.io import tensor_to_frames

        frames = tensor_to_frames(outputs["prediction"])
        indices = [int(i) for i in torch.as_tensor(outputs["frame_index"]).tolist()]
        counts = outputs.get("num_frames")
        counts = [int(c) for c in counts.tolist()] if counts is not None else [None] * len(indices)
        touched = set()
        for frame, video_id, index, count in zip(frames, outputs["video_id"], indices, counts):
            self._frames.setdefault(video_id, {})[index] = frame
            if count is not None:
                self._expected[video_id] = count
            touched.add(video_id)
        for video_id in touched:
            if video_id in self._done:  # frames repeated by a distributed sampler
                self._frames.pop(video_id, None)
                continue
            expected = self._expected.get(video_id)
            if expected is not None and len(self._frames[video_id]) >= expected:
                self._write(video_id)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pending: list[Any] = [(self._frames, self._expected, self._done)]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, pending[0])
            pending = gathered
        self._frames, self._expected = {}, {}
        if not trainer.is_global_zero:
            return
        done = set().union(*(d for _, _, d in pending))
        for frames, expected, _ in pending:
            for video_id, by_index in frames.items():
                if video_id not in done:
                    self._frames.setdefault(video_id, {}).update(by_index)
            self._expected.update(expected)
        for video_id in sorted(self._frames):
            self._write(video_id)
