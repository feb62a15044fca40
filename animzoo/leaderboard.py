"""``animzoo leaderboard``: test several models on one data config with one metric suite.

Every entry is a name and a model source: a pretrained name or folder (``monkeynet.synthetic64``),
a Lightning checkpoint written by ``animzoo fit`` (``runs/.../last.ckpt``), or a model recipe
(``recipes/baselines/source-copy.yaml``; for models without trained weights, or a recipe plus a
checkpoint as ``RECIPE@CHECKPOINT``). All entries are tested with the same datamodule and the
same metrics (``--metrics`` overrides every model's ``test_metrics``), so the rows are
comparable. The results go to ``<output_dir>/leaderboard-<name>.{csv,md,json}`` and one bar chart
per metric, ``leaderboard-<name>-<metric>.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animzoo.errors import AnimzooInputError

__all__ = [
    "LeaderboardEntry",
    "bar_chart",
    "load_model",
    "parse_entry",
    "run_leaderboard",
    "write_leaderboard",
]

# Direction of each metric family, for the charts' captions ("lower is better").
_LOWER_IS_BETTER = ("l1", "lpips", "fid", "akd", "aed", "sms")


@dataclass
class LeaderboardEntry:
    """One row: ``name`` and where its model comes from."""

    name: str
    source: str
    checkpoint: str | None = None
    results: dict[str, float] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)


def parse_entry(text: str) -> LeaderboardEntry:
    """``NAME=SOURCE`` or ``NAME=RECIPE@CHECKPOINT`` -> :class:`LeaderboardEntry`."""
    if "=" not in text:
        raise AnimzooInputError(
            f"leaderboard entry {text!r} is not NAME=SOURCE; e.g. --entry Monkey-Net=monkeynet.synthetic64 "
            "or --entry SourceCopy=recipes/baselines/source-copy.yaml"
        )
    name, source = (part.strip() for part in text.split("=", 1))
    checkpoint = None
    if "@" in source and source.split("@", 1)[0].endswith((".yaml", ".yml")):
        source, checkpoint = source.split("@", 1)
    if not name or not source:
        raise AnimzooInputError(f"leaderboard entry {text!r}: empty name or source")
    return LeaderboardEntry(name=name, source=source, checkpoint=checkpoint)


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise AnimzooInputError(f"{path}: no such file (a recipe, a checkpoint or a pretrained name was expected)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise AnimzooInputError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise AnimzooInputError(f"{path}: expected a mapping at the top level")
    return data


def _model_from_recipe(path: Path) -> Any:
    """Instantiate the ``model`` section of a recipe (``class_path`` + ``init_args``)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningModule

    import animzoo.methods  # noqa: F401  (registers the method classes)

    model = _yaml(path).get("model")
    if not isinstance(model, dict) or "class_path" not in model:
        raise AnimzooInputError(f"{path}: no model section with a class_path; is this a model recipe?")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model")
    try:
        config = parser.parse_object({"model": model})
        return parser.instantiate(config).model
    except Exception as err:  # jsonargparse reports bad keys with a long message
        raise AnimzooInputError(f"{path}: cannot build its model ({err})") from err


def load_model(entry: LeaderboardEntry) -> Any:
    """The LightningModule of ``entry`` (weights loaded when the source has them)."""
    from animzoo import hub

    source = Path(entry.source)
    if source.suffix in (".yaml", ".yml"):
        model = _model_from_recipe(source)
        if entry.checkpoint:
            trained = hub.from_checkpoint(entry.checkpoint)
            hub._load_state(model, trained.state_dict(), entry.checkpoint, "train it with the same recipe")
        return model
    if source.suffix == ".ckpt":
        return hub.from_checkpoint(source)
    return hub.from_pretrained(entry.source)


def metrics_from_config(path: str | Path | None) -> dict[str, dict[str, Any]] | None:
    """The ``model.init_args.test_metrics`` of a metrics recipe (``recipes/metrics/*.yaml``)."""
    if path is None:
        return None
    data = _yaml(Path(path))
    metrics = (data.get("model") or {}).get("init_args", {}).get("test_metrics")
    if metrics is None:
        raise AnimzooInputError(f"{path}: expected model.init_args.test_metrics (see recipes/metrics/)")
    if isinstance(metrics, list):
        return {name: {} for name in metrics}
    return {name: dict(kwargs or {}) for name, kwargs in metrics.items()}


def _datamodule(data_config: str | Path, root: str | None = None) -> Any:
    from animzoo.data import AnimationDataModule

    data = _yaml(Path(data_config)).get("data")
    if not isinstance(data, dict):
        raise AnimzooInputError(f"{data_config}: no data section (see recipes/data/)")
    args = dict(data.get("init_args", data))
    if root is not None:
        args["root"] = root
    return AnimationDataModule(**args)


def run_leaderboard(
    entries: Sequence[LeaderboardEntry],
    data_config: str | Path,
    metrics_config: str | Path | None = None,
    *,
    data_root: str | None = None,
    accelerator: str = "auto",
    limit_test_batches: int | float | None = None,
) -> list[LeaderboardEntry]:
    """Test every entry on the data of ``data_config`` (``data_root`` overrides its root) with the
    metrics of ``metrics_config``; fills and returns the entries' ``results`` and ``status``."""
    import lightning.pytorch as pl

    metrics = metrics_from_config(metrics_config)
    for entry in entries:
        datamodule = _datamodule(data_config, data_root)
        model = load_model(entry)
        if metrics is not None:
            model.test_metrics_config = metrics
        pl.seed_everything(0, verbose=False)
        trainer = pl.Trainer(
            accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
            enable_model_summary=False, limit_test_batches=limit_test_batches,
        )
        trainer.test(model, datamodule=datamodule, verbose=False)
        entry.results = dict(getattr(model, "test_results", {}))
        entry.status = dict(getattr(model, "test_status", {}))
    return entries


def _direction(metric: str) -> str:
    """The caption of a metric's chart: which way is better (counts have no direction)."""
    base = metric.rsplit("/", 1)[-1].split("@")[0]
    if base.endswith(("_frames", "_missing")):
        return "a count, not a score"
    if base.startswith("sms_gt"):
        return "reference: the ground truth's own value"
    lower = base.startswith(_LOWER_IS_BETTER) and "detected" not in base
    return "lower is better" if lower else "higher is better"


def _format(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


def bar_chart(title: str, names: Sequence[str], values: Sequence[float], caption: str = "") -> Any:
    """A horizontal bar chart as a PIL image (NaN values are drawn as "n/a")."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    row, left, width = 28, max(90, 8 * max(len(n) for n in names) + 16), 360
    height = 48 + row * len(names) + 24
    image = Image.new("RGB", (left + width + 90, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill="black", font=font)
    finite = [v for v in values if math.isfinite(v)]
    top = max((abs(v) for v in finite), default=1.0) or 1.0
    palette = [(52, 101, 164), (204, 102, 51), (78, 154, 6), (117, 80, 123), (193, 125, 17)]
    for i, (name, value) in enumerate(zip(names, values)):
        y = 40 + i * row
        draw.text((10, y + 6), name, fill="black", font=font)
        if math.isfinite(value):
            length = int(width * abs(value) / top)
            draw.rectangle([left, y + 4, left + max(length, 1), y + row - 6], fill=palette[i % len(palette)])
            draw.text((left + max(length, 1) + 6, y + 6), _format(value), fill="black", font=font)
        else:
            draw.text((left + 6, y + 6), "n/a", fill="gray", font=font)
    if caption:
        draw.text((10, height - 20), caption, fill="gray", font=font)
    return image


def write_leaderboard(
    entries: Sequence[LeaderboardEntry],
    output_dir: str | Path,
    name: str,
    *,
    context: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``leaderboard-<name>.csv``, ``.md``, ``.json`` and one PNG per metric; returns the
    paths. Metrics are the union over entries (a missing one is empty / n/a)."""
    import torch

    from animzoo.io import atomic_write

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    columns = sorted({k for e in entries for k in e.results})
    stem = f"leaderboard-{name}"
    written: list[Path] = []

    def put(path: Path, text: str) -> None:
        atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
        written.append(path)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", *columns])
    for e in entries:
        writer.writerow([e.name, *(f"{e.results[c]:.6g}" if c in e.results else "" for c in columns)])
    put(output / f"{stem}.csv", buffer.getvalue())

    context = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **dict(context or {}),
    }
    short = [c.split("/", 1)[-1] for c in columns]
    lines = [f"# Leaderboard: {name}", ""]
    lines += [f"- {k}: {v}" for k, v in context.items()]
    lines += ["", "| model | " + " | ".join(short) + " |", "|---|" + "---|" * len(columns)]
    for e in entries:
        lines.append(f"| {e.name} | " + " | ".join(_format(e.results.get(c, float("nan"))) for c in columns) + " |")
    notes = sorted({f"{k}: {v}" for e in entries for k, v in e.status.items() if not v.startswith("ok")})
    if notes:
        lines += ["", "Unavailable metrics (n/a):", ""] + [f"- {n}" for n in notes]
    put(output / f"{stem}.md", "\n".join(lines) + "\n")

    report = {"name": name, "context": context,
              "entries": [{"name": e.name, "source": e.source, "checkpoint": e.checkpoint,
                           "results": e.results, "status": e.status} for e in entries]}
    put(output / f"{stem}.json", json.dumps(report, indent=2, allow_nan=True) + "\n")

    for column in columns:
        metric = column.split("/", 1)[-1]
        image = bar_chart(f"{name}: {metric}", [e.name for e in entries],
                          [e.results.get(column, float("nan")) for e in entries], caption=_direction(metric))
        safe = metric.replace("/", "_").replace("@", "_at_")
        path = output / f"{stem}-{safe}.png"
        png = io.BytesIO()
        image.save(png, format="PNG")
        atomic_write(path, lambda handle, data=png.getvalue(): handle.write(data))
        written.append(path)
    return written
