"""The ``animzoo`` command line.

``animzoo fit|validate|test|predict --config RECIPE`` run LightningCLI over every
:class:`~animzoo.methods.base.AnimationModule` and :class:`~animzoo.data.AnimationDataModule`
(subclass mode, ``parser_mode="omegaconf"``, configs saved with each run, wandb logging by
default, offline when no account is configured). ``animzoo data ...`` and the other extra
commands (``animate``, ``weights``) are plain argparse. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import netrc
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from animzoo import __version__

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
ARGPARSE_COMMANDS = frozenset({"data", "weights", "animate", "leaderboard"})

EPILOG_MAIN = """examples:
  animzoo fit --config recipes/monkeynet/synthetic-64.yaml
  animzoo test --config recipes/monkeynet/synthetic-64.yaml --ckpt_path runs/animzoo/RUN/checkpoints/last.ckpt
  animzoo test --config recipes/baselines/source-copy.yaml
  animzoo predict --config recipes/monkeynet/synthetic-64.yaml --ckpt_path CKPT --output_dir out/
  animzoo fit --config recipes/monkeynet/synthetic-64.yaml --print_config > my-recipe.yaml
  animzoo data synth --out data/synthetic-64 --videos 200 --frames 32 --size 64 --seed 0

fit/validate/test/predict are LightningCLI commands: `animzoo fit --help` lists their options,
`animzoo fit --model.help MonkeyNet` a method's. Logging goes to wandb (offline when no wandb
account is configured; `--trainer.logger CSVLogger --trainer.logger.save_dir runs` or
`--trainer.logger false` switch it).
"""

EPILOG_DATA = """examples:
  animzoo data synth --out data/synthetic-64 --videos 200 --frames 32 --size 64 --seed 0
  animzoo data inspect data/synthetic-64
  animzoo data annotate --landmarks dlib68 ~/data/vox
"""

EPILOG_ANNOTATE = """examples:
  animzoo data annotate --landmarks animzoo70 data/synthetic-64    # SyntheticHeads
  animzoo data annotate --landmarks dlib68 ~/data/vox --batch-size 64
  animzoo data annotate --landmarks fan68 ~/data/vox --device cuda --overwrite

Writes <video>.landmarks.npy (T x L x 2 float32 pixels) for every video of train/ and test/ (or
of the root without split folders) and of pairs.csv. Frames without a detected face are filled by
linear interpolation in time; a video without any face gets no sidecar. Videos that already have
a sidecar are skipped without decoding unless --overwrite. The per-video report (frames, detection
rate, interpolated frames, SMS in pixels, status) is printed and saved as JSON to
ROOT/annotate-landmarks-BACKEND.json (or --report FILE). Exit status 0 when every video has a
sidecar afterwards, 1 when some failed (listed), 2 on bad arguments.
Backends: animzoo70 (animzoo's detector, for SyntheticHeads), dlib68 (real faces; non-commercial
model), mediapipe478 (pip install mediapipe==0.10.21), fan68 (FAN weight files, see
`animzoo weights list`).
"""

EPILOG_SYNTH = """examples:
  animzoo data synth --out data/synthetic-64 --videos 200 --frames 32 --size 64 --seed 0
  animzoo data synth --out data/tiny --videos 8 --frames 12 --size 32 --format png

Writes root/train and root/test (split by identity), one <identity>#<clip> video per clip with
its <video>.landmarks.npy, <video>.mesh.npz and <video>.parsing.npy sidecars, pairs.csv
(cross-identity test pairs) and synthetic.json. The same seed gives the same bytes.
"""

EPILOG_INSPECT = """examples:
  animzoo data inspect data/synthetic-64
  animzoo data inspect ~/data/vox --landmark-count 68
  animzoo data inspect ~/data/moving-gif --frame-shape 256 256   # png strips

Checks every video and sidecar and lists every problem with its file and the fix, instead of
stopping at the first. Exit status 1 when there is any problem.
"""


EPILOG_WEIGHTS = """examples:
  animzoo weights list                      # what animzoo knows, and whether it resolves here
  animzoo weights download vgg19            # fetch into the torch hub cache, sha256 checked
  animzoo weights verify vgg19

Files are looked up in this order: an explicit path, $ANIMZOO_WEIGHTS_DIR, the torch hub cache,
a file shipped in an installed package. See docs/pretrained.md.
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="animzoo",
        description="animzoo: a model zoo of one-shot image animation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_MAIN,
    )
    parser.add_argument("--version", action="version", version=f"animzoo {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    # Listed for --help only: main() hands these to LightningCLI before argparse runs.
    for name, text in (
        ("fit", "train a method (LightningCLI; `animzoo fit --help`)"),
        ("validate", "evaluate a method on the validation split (LightningCLI)"),
        ("test", "evaluate a method on the test split: metrics table + metrics.json (LightningCLI)"),
        ("predict", "write the animated test videos <output_dir>/<video_id>.mp4 (LightningCLI)"),
    ):
        commands.add_parser(name, help=text, add_help=False)

    data = commands.add_parser(
        "data",
        help="create, inspect and annotate datasets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_DATA,
    )
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data_commands.required = True

    synth = data_commands.add_parser(
        "synth",
        help="render the SyntheticHeads dataset",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_SYNTH,
    )
    synth.add_argument("--out", required=True, type=Path, help="dataset root to write")
    synth.add_argument("--videos", type=int, default=200, help="number of videos (default 200)")
    synth.add_argument("--frames", type=int, default=32, help="frames per video (default 32)")
    synth.add_argument("--size", type=int, default=64, help="frame size in pixels (default 64)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument(
        "--clips-per-identity", type=int, default=4, help="clips of each identity (default 4)"
    )
    synth.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of identities in test (default 0.2)"
    )
    synth.add_argument(
        "--format", dest="video_format", choices=["mp4", "png"], default="mp4",
        help="mp4 files or folders of png frames (default mp4)",
    )
    synth.add_argument("--fps", type=float, default=25.0, help="frame rate of mp4 files (default 25)")
    synth.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --out folder"
    )
    synth.set_defaults(handler=_run_synth)

    inspect = data_commands.add_parser(
        "inspect",
        help="validate a dataset and list every problem",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_INSPECT,
    )
    inspect.add_argument("root", type=Path, help="dataset root (first-order-model layout)")
    inspect.add_argument(
        "--frame-shape", type=int, nargs=2, metavar=("H", "W"),
        help="frame size of horizontal png/jpg strips",
    )
    inspect.add_argument(
        "--landmark-count", type=int, help="expected landmarks per frame in .landmarks.npy sidecars"
    )
    inspect.set_defaults(handler=_run_inspect)

    annotate = data_commands.add_parser(
        "annotate",
        help="write landmark sidecars for every video with a landmark backend",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_ANNOTATE,
    )
    annotate.add_argument("root", type=Path, metavar="DIR", help="dataset root (first-order-model layout)")
    annotate.add_argument(
        "--landmarks", required=True, metavar="BACKEND",
        help="landmark backend: animzoo70, dlib68, mediapipe478 or fan68",
    )
    annotate.add_argument(
        "--overwrite", action="store_true", help="re-annotate videos that already have a sidecar"
    )
    annotate.add_argument(
        "--batch-size", type=int, default=32, help="frames decoded and detected at once (default 32)"
    )
    annotate.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available, else cpu)"
    )
    annotate.add_argument(
        "--frame-shape", type=int, nargs=2, metavar=("H", "W"),
        help="frame size of horizontal png/jpg strips",
    )
    annotate.add_argument(
        "--report", type=Path, default=None, metavar="FILE.json",
        help="where to save the JSON report (default: DIR/annotate-landmarks-BACKEND.json)",
    )
    annotate.set_defaults(handler=_run_annotate)

    weights = commands.add_parser(
        "weights",
        help="list, download and verify the weight files animzoo uses",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_WEIGHTS,
    )
    weights_commands = weights.add_subparsers(dest="weights_command", metavar="WEIGHTS_COMMAND")
    weights_commands.required = True
    weights_list = weights_commands.add_parser("list", help="every known weight file and where it resolves")
    weights_list.set_defaults(handler=_run_weights_list)
    download = weights_commands.add_parser("download", help="download weight files (sha256 checked)")
    download.add_argument("names", nargs="+", metavar="NAME", help="names from `animzoo weights list`")
    download.add_argument(
        "--dir", type=Path, default=None,
        help="folder to download into (default: the torch hub cache, where animzoo looks)",
    )
    download.set_defaults(handler=_run_weights_download)
    verify = weights_commands.add_parser("verify", help="check the sha256 of the files found here")
    verify.add_argument("names", nargs="*", metavar="NAME", help="names to check (default: all found)")
    verify.set_defaults(handler=_run_weights_verify)

    leaderboard = commands.add_parser(
        "leaderboard",
        help="test several models on one data config; write CSV, markdown and bar charts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_LEADERBOARD,
    )
    leaderboard.add_argument("--data", required=True, type=Path, help="data recipe (recipes/data/*.yaml)")
    leaderboard.add_argument(
        "--data-root", default=None, help="dataset folder (overrides the data recipe's root)"
    )
    leaderboard.add_argument(
        "--metrics", type=Path, default=None,
        help="metrics recipe giving model.init_args.test_metrics for every entry (recipes/metrics/*.yaml); "
        "default: each model's own test_metrics",
    )
    leaderboard.add_argument(
        "--entry", action="append", required=True, metavar="NAME=SOURCE",
        help="a row: NAME=<pretrained name | folder | .ckpt | model recipe | RECIPE@CKPT> (repeat)",
    )
    leaderboard.add_argument("--name", required=True, help="leaderboard name, used in the file names")
    leaderboard.add_argument(
        "--output-dir", type=Path, default=Path("benchmarks/results"), help="default benchmarks/results"
    )
    leaderboard.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    leaderboard.add_argument(
        "--limit-test-batches", type=float, default=None, help="test on part of the data (smoke runs)"
    )
    leaderboard.set_defaults(handler=_run_leaderboard)

    _add_animate_parser(commands)
    return parser


EPILOG_LEADERBOARD = """examples:
  animzoo leaderboard --name synthetic64 --data recipes/data/synthetic-64.yaml \\
      --metrics recipes/metrics/synthetic-64.yaml \\
      --entry Monkey-Net=monkeynet.synthetic64 --entry SourceCopy=recipes/baselines/source-copy.yaml
  animzoo leaderboard --name vox256 --data recipes/data/vox-256.yaml --data-root data/vox \\
      --entry mine=runs/animzoo/abc/checkpoints/last.ckpt --entry Monkey-Net=recipes/monkeynet/vox-256.yaml@m.ckpt

Every entry is tested on the same data with the same metric suite; writes
<output-dir>/leaderboard-<name>.csv, .md, .json and leaderboard-<name>-<metric>.png.
"""


def _run_leaderboard(args: argparse.Namespace) -> int:
    from animzoo.leaderboard import parse_entry, run_leaderboard, write_leaderboard

    entries = [parse_entry(text) for text in args.entry]
    limit = args.limit_test_batches
    if limit is not None and limit >= 1:
        limit = int(limit)
    run_leaderboard(entries, args.data, args.metrics, data_root=args.data_root,
                    accelerator=args.accelerator, limit_test_batches=limit)
    context = {"data": str(args.data), "metrics": str(args.metrics) if args.metrics else "per model"}
    for path in write_leaderboard(entries, args.output_dir, args.name, context=context):
        print(f"wrote {path}")
    return 0


EPILOG_ANIMATE = """examples:
  animzoo animate --pretrained monkeynet.synthetic64 --source face.png --driving talk.mp4 --output out.mp4
  animzoo animate --checkpoint runs/monkeynet/last.ckpt --source face.png --driving talk.mp4 \\
      --output out.mp4 --relative --adapt-scale --find-best-frame --side-by-side
  animzoo animate --pretrained path/to/pretrained_folder --source face.jpg --driving frames/ --fps 30 --output out.gif
  animzoo animate --checkpoint runs/sparse2dense/last.ckpt --source face.png \\
      --driving-landmarks speech.npy --landmarks-size 256x256 --adapt-scale --fps 25 --output talk.mp4
  animzoo animate --pretrained pwm_model --source face.png --source-params face.mesh.npz:0 \\
      --edit "pose.yaw=0.3,expression.mouth_open=0.8" --output edited.png
  animzoo animate --pretrained pwm_model --source clip.mp4 --source-params clip.mp4.mesh.npz \\
      --edit "pose=[0.3,0,0,0,0,0,0.5]" --frames 25 --output turn.mp4
  animzoo animate --checkpoint runs/pwm/last.ckpt --source face.png --source-mesh face.mesh.npz \\
      --driving-meshes talk.mp4.mesh.npz --meshes-size 256x256 --fps 25 --output talk.mp4

The output has the driving video's length and frame rate (a folder of frames or a strip has no
frame rate: 25 fps unless --fps). Sources and driving frames of another size than the model's are
resized (with a warning). --relative transfers the driving motion relative to driving frame 0 (or,
with --find-best-frame, to the driving frame whose keypoints best match the source's, found with
the method's own keypoints). Exit status 2 on bad input, with a one-line message.

Landmark-driven methods (sparse2dense) also take --driving-landmarks instead of --driving: a .npy
of T x L x 2 float pixel coordinates (x then y) of a frame of --landmarks-size HxW (default: the
source image's size), e.g. an audio-to-landmarks model's output. One output frame per landmark
frame, at --fps (default 25). With --driving-landmarks, motion is relative by default (the
landmarks of another face would deform the source in absolute mode); --no-relative for absolute.

Mesh-driven methods (pwm) take --driving-meshes instead: a <video>.mesh.npz sidecar (verts T x V x 3:
x, y pixels of a frame of --meshes-size HxW, default the source image's size, and depth z; faces),
e.g. from a face fitter such as DECA (docs/data.md). The source image's mesh is --source-mesh
FILE.mesh.npz[:FRAME] (pixels of the source image as given), default frame 0 of --driving-meshes
(right when the source is frame 0 of the driving video). Absolute motion only.

Face editing (--edit, mesh-driven methods with a morphable head): --source-params
SIDECAR.mesh.npz[:FRAME] gives the source image's fitted head parameters (param_identity,
param_expression, param_gaze, param_pose; frame 0 unless :FRAME) and --edit sets some of them:
comma-separated field.name=value items (pose.yaw=0.3, expression.mouth_open=0.8, gaze.gaze_yaw=0.2;
names are the head's, an index works too: expression.1=1) or a whole field, field=[v1,v2,...]
(quote it in the shell). Fields: identity, expression, gaze, pose. One edited image, or with
--frames N a sweep of N frames from the source's parameters to the edited ones (an .mp4 at --fps,
default 25, or a .png strip).
"""


def _size_hxw(text: str) -> tuple[int, int]:
    """``--landmarks-size``: ``HxW`` (e.g. ``256x256``) or one number for a square frame."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        height, width = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        if len(parts) > 2 or height < 2 or width < 2:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW with H, W >= 2 (e.g. 256x256), got {text!r}") from None
    return height, width


def _mesh_file_frame(text: str) -> tuple[Path, int]:
    """``--source-params`` / ``--source-mesh``: ``FILE.mesh.npz`` or ``FILE.mesh.npz:FRAME`` -> (path, frame)."""
    head, sep, tail = text.rpartition(":")
    if sep and head and tail.lstrip("-").isdigit() and not Path(text).exists():
        return Path(head), int(tail)
    return Path(text), 0


def _add_animate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The ``animate`` command (:func:`animzoo.animate.run_animate`). Defined here, not in
    animzoo.animate, so that building the parser (``animzoo --help``, ``animzoo data ...``) does
    not import torch."""
    parser = subparsers.add_parser(
        "animate",
        help="animate a source image with a driving video (or landmarks / meshes), or edit a face",
        description="Animate a source image with a driving video, or a landmark sequence for landmark-driven "
        "methods, or a mesh sequence for mesh-driven methods, using a trained or pretrained method; or edit the "
        "source face's head parameters (pose, expression, gaze) with a mesh-driven method (--edit).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_ANIMATE,
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, metavar="CKPT", help="Lightning checkpoint written by `animzoo fit`")
    model.add_argument(
        "--pretrained", metavar="NAME_OR_DIR",
        help="a named pretrained model (python -m animzoo.hub list) or a save_pretrained() folder",
    )
    parser.add_argument("--method", help="expected method of --checkpoint (refuses another one)")
    parser.add_argument("--source", required=True, type=Path, metavar="IMG", help="source image")
    # Exactly one is needed; checked in the handler, so that the message can add the mesh options.
    drive = parser.add_mutually_exclusive_group()
    drive.add_argument(
        "--driving", type=Path, metavar="VIDEO",
        help="driving video (mp4/mov/webm/avi/mkv, gif, folder of frames, png strip with --frame-shape)",
    )
    drive.add_argument(
        "--driving-landmarks", type=Path, metavar="FILE.npy",
        help="instead of --driving, for landmark-driven methods: T x L x 2 float pixel coordinates (x, y)",
    )
    drive.add_argument(
        "--driving-meshes", type=Path, metavar="FILE.mesh.npz",
        help="instead of --driving, for mesh-driven methods (pwm): a mesh sidecar, verts T x V x 3 in pixels",
    )
    drive.add_argument(
        "--edit", action="append", metavar="EDITS",
        help="instead of --driving, edit the source face (mesh-driven methods with a head): comma-separated "
        "field.name=value or field=[v1,...], e.g. 'pose.yaw=0.3,expression.mouth_open=0.8' (may be repeated)",
    )
    parser.add_argument(
        "--landmarks-size", type=_size_hxw, metavar="HxW",
        help="frame size the --driving-landmarks pixels refer to (default: the source image's size)",
    )
    parser.add_argument(
        "--source-landmarks", type=Path, metavar="FILE.npy",
        help="L x 2 pixel coordinates of the source image's landmarks (default: the method's detector)",
    )
    parser.add_argument(
        "--meshes-size", type=_size_hxw, metavar="HxW",
        help="frame size the --driving-meshes pixels refer to (default: the source image's size)",
    )
    parser.add_argument(
        "--source-mesh", type=_mesh_file_frame, metavar="FILE.mesh.npz[:FRAME]",
        help="the source image's mesh (pixels of the source image), frame 0 unless :FRAME "
        "(default: frame 0 of --driving-meshes)",
    )
    parser.add_argument(
        "--source-params", type=_mesh_file_frame, metavar="SIDECAR.mesh.npz[:FRAME]",
        help="with --edit: the source image's fitted head parameters (param_* arrays), frame 0 unless :FRAME",
    )
    parser.add_argument(
        "--frames", type=int, metavar="N",
        help="with --edit: a sweep of N frames from the source's parameters to the edited ones (default 1: one image)",
    )
    parser.add_argument(
        "--output", required=True, type=Path, metavar="OUT",
        help="output video (.mp4, .gif, ...), or image (.png) for a single --edit",
    )
    parser.add_argument(
        "--relative", action=argparse.BooleanOptionalAction, default=None,
        help="relative motion transfer (first-order-model --relative); default: off with --driving, "
        "on with --driving-landmarks",
    )
    parser.add_argument("--adapt-scale", action="store_true", help="scale relative motion by the keypoint hull ratio")
    parser.add_argument("--find-best-frame", action="store_true", help="reference = driving frame closest to the source pose")
    parser.add_argument(
        "--side-by-side", action="store_true",
        help="write source | driving (or its landmarks / meshes) | result (source | result with --edit)",
    )
    parser.add_argument(
        "--fps", type=float,
        help="output frame rate (default: the driving video's; 25 with --driving-landmarks, --driving-meshes, --edit)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=16, help="driving frames per forward pass (default 16)")
    parser.add_argument("--frame-shape", type=int, nargs=2, metavar=("H", "W"), help="frame size of a png strip driving video")
    parser.set_defaults(handler=lambda args: _run_animate(parser, args))
    return parser


def _run_animate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if all(getattr(args, name) is None for name in ("driving", "driving_landmarks", "driving_meshes", "edit")):
        parser.error(
            "one of the arguments --driving --driving-landmarks is required (or --driving-meshes / --edit "
            "for mesh-driven methods such as pwm)"
        )
    from animzoo.animate import run_animate

    return run_animate(args)


def _run_weights_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from animzoo.weights import WeightsError, find_weight, list_weights

    table = Table(title="weight files")
    for column in ("name", "file", "found here", "sha256", "licence"):
        table.add_column(column, overflow="fold")
    for spec in list_weights():
        try:
            found = find_weight(spec.name)
            where = str(found) if found is not None else "missing"
        except WeightsError as err:  # found, but with the wrong checksum
            where = f"bad file: {err}"
        table.add_row(spec.name, spec.filename, where, spec.expected_hash, spec.licence)
    Console().print(table)
    return 0


def _run_weights_download(args: argparse.Namespace) -> int:
    from animzoo.weights import download_weight

    for name in args.names:
        path = download_weight(name, destination=args.dir)
        print(f"{name}: {path}")
    return 0


def _run_weights_verify(args: argparse.Namespace) -> int:
    from animzoo.weights import WeightsError, find_weight, list_weights

    names = args.names or [spec.name for spec in list_weights()]
    failures = 0
    for name in names:
        try:
            found = find_weight(name)
        except WeightsError as err:
            print(f"{name}: FAILED: {err}")
            failures += 1
            continue
        if found is None:
            print(f"{name}: not found here")
            failures += bool(args.names)  # only a name asked for explicitly must be present
        else:
            print(f"{name}: ok ({found})")
    return 1 if failures else 0


def _run_synth(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeRemainingColumn,
    )

    from animzoo.data.synthetic import synthesize

    console = Console(stderr=True)
    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        console.print(
            f"[red]error:[/red] {out} exists and is not empty; "
            "choose another --out or pass --overwrite"
        )
        return 2
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task("rendering videos", total=args.videos)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        summary = synthesize(
            out, videos=args.videos, frames=args.frames, size=args.size, seed=args.seed,
            clips_per_identity=args.clips_per_identity, test_fraction=args.test_fraction,
            video_format=args.video_format, fps=args.fps, progress=report,
        )
    console.print(
        f"wrote {summary['videos']} videos ({summary['train_videos']} train, "
        f"{summary['test_videos']} test) of {args.frames} frames at {args.size} px "
        f"and {summary['pairs']} cross-identity pairs to {out} in {summary['seconds']:.1f} s"
    )
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from animzoo.data.videos import inspect_dataset

    console = Console()
    report = inspect_dataset(
        args.root,
        frame_shape=tuple(args.frame_shape) if args.frame_shape else None,
        landmark_count=args.landmark_count,
    )
    summary = Table(title=f"dataset {args.root}")
    for column in ("split", "videos", "frames", "landmarks", "meshes", "parsing"):
        summary.add_column(column, justify="right" if column != "split" else "left")
    for split, counts in report.splits.items():
        summary.add_row(
            split, str(counts.videos), str(counts.frames), str(counts.landmarks), str(counts.meshes),
            str(counts.parsing),
        )
    console.print(summary)
    if not report.problems:
        console.print("[green]no problems found[/green]")
        return 0
    problems = Table(title=f"{len(report.problems)} problem(s)", show_lines=True)
    problems.add_column("file", overflow="fold")
    problems.add_column("problem", overflow="fold")
    problems.add_column("fix", overflow="fold")
    for problem in report.problems:
        problems.add_row(str(problem.path), problem.message, problem.fix)
    console.print(problems)
    return 1


def _run_annotate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    from animzoo.data.annotate import annotate_landmarks, default_report_path

    errors = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=errors, transient=True,
    ) as progress:
        task = progress.add_task(f"annotating with {args.landmarks}", total=None)

        def report_progress(done: int, total: int, row: object) -> None:
            progress.update(task, completed=done, total=total)

        report = annotate_landmarks(
            args.root, args.landmarks, overwrite=args.overwrite, batch_size=args.batch_size,
            device=args.device, progress=report_progress,
            frame_shape=tuple(args.frame_shape) if args.frame_shape else None,
        )
    console = Console()
    header, rows = report.table()
    table = Table(title=f"landmarks of {args.root} ({report.backend})")
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index in (0, len(header) - 1) else "right",
                         overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    console.print(escape(report.summary()))
    path = args.report if args.report is not None else default_report_path(args.root, args.landmarks)
    try:
        report.save(path)
        console.print(f"report: {escape(str(path))}")
    except OSError as err:  # a read-only dataset: the table above is the report
        errors.print(f"[yellow]warning:[/yellow] cannot write the report {escape(str(path))} ({escape(str(err))})")
    if report.ok:
        return 0
    errors.print(f"[red]{len(report.failures)} video(s) failed:[/red]")
    for row in report.failures:
        errors.print(f"- {escape(str(row.video))}: {escape(row.reason)}", soft_wrap=True)
    return 1


def main(args: Sequence[str] | None = None) -> int:
    """Run the ``animzoo`` command with ``args`` (default: ``sys.argv[1:]``); returns the exit code.

    ``fit``/``validate``/``test``/``predict`` (or LightningCLI options such as ``--config``
    before them) go to LightningCLI; ``data``, ``weights``, ``animate``,
    ``--help`` and ``--version`` to argparse.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] not in ARGPARSE_COMMANDS and argv[0] not in ("-h", "--help", "--version"):
        return run_lightning_cli(argv, from_sys_argv=args is None)
    parser = _build_parser()
    namespace = parser.parse_args(argv)
    from animzoo.errors import AnimzooInputError

    try:
        return int(namespace.handler(namespace))
    except AnimzooInputError as err:  # bad input: one line with the fix, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- LightningCLI


def wandb_account_configured() -> bool:
    """Whether wandb has credentials: ``WANDB_API_KEY``, a netrc entry for the wandb host, or
    an api key in wandb's settings files."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc_path.is_file():
        try:
            if netrc.netrc(str(netrc_path)).authenticators(host):
                return True
        except (netrc.NetrcParseError, OSError):
            pass
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR", Path.home() / ".config" / "wandb"))
    for settings in (config_dir / "settings", Path.cwd() / "wandb" / "settings"):
        try:
            if settings.is_file() and "api_key" in settings.read_text(encoding="utf-8"):
                return True
        except OSError:
            pass
    return False


def configure_wandb_mode() -> str | None:
    """Set ``WANDB_MODE=offline`` when it is unset and no wandb account is configured, so a
    run never stops at wandb's login prompt; returns the mode now in force."""
    if "WANDB_MODE" not in os.environ and not wandb_account_configured():
        os.environ["WANDB_MODE"] = "offline"
    return os.environ.get("WANDB_MODE")


def run_dir(trainer: Any) -> Path:
    """The folder of a run: the logger's (``<save_dir>/<name>/<version>`` for wandb and other
    loggers, as ModelCheckpoint uses; ``log_dir`` for CSV/TensorBoard), or
    ``default_root_dir`` without a logger. Config, checkpoints/, metrics.json, samples/ live
    there."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    logger = trainer.logger
    if logger is None:
        path = str(trainer.default_root_dir)
    elif isinstance(logger, (CSVLogger, TensorBoardLogger)):
        path = str(logger.log_dir)
    else:
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        version = logger.version if trainer.is_global_zero else None
        version = version if isinstance(version, str) else f"version_{version}"
        path = os.path.join(str(save_dir), str(logger.name), version)
    return Path(trainer.strategy.broadcast(path))


_CLI_CLASS: Any = None


#: Model init args that say what to evaluate, not what the model is: the command line's win
#: over a checkpoint's (see ``AnimZooCLI._parse_ckpt_path``).
EVALUATION_ARGS = ("test_metrics", "val_metrics")


def _cli_class() -> Any:
    """Build the LightningCLI subclass on first use (lightning is heavy to import)."""
    global _CLI_CLASS
    if _CLI_CLASS is not None:
        return _CLI_CLASS

    from jsonargparse import lazy_instance
    from lightning.pytorch.cli import (
        LightningArgumentParser,
        LightningCLI,
        SaveConfigCallback,
    )
    from lightning.pytorch.loggers import WandbLogger

    class RunConfigCallback(SaveConfigCallback):
        """Save the config as ``config.yaml`` in the run folder (:func:`run_dir`), on rank 0."""

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if self.already_saved:
                return
            folder = run_dir(trainer)
            if trainer.is_global_zero:
                folder.mkdir(parents=True, exist_ok=True)
                self.parser.save(
                    self.config, str(folder / self.config_filename),
                    overwrite=True, multifile=self.multifile,
                )
            self.already_saved = True
            self.already_saved = trainer.strategy.broadcast(self.already_saved)

    class AnimZooCLI(LightningCLI):
        """LightningCLI with animzoo's defaults: wandb logger, last-checkpoint saving,
        ``predict`` writing videos, ``test`` printing and saving its metrics."""

        def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
            parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
            if subcommand == "predict":
                parser.add_argument(
                    "--output_dir", type=str | None, default=None,
                    help="folder of the predicted videos <video_id>.mp4 (default: <run folder>/predictions)",
                )
                parser.add_argument("--fps", type=float, default=25.0, help="frame rate of the predicted videos")
                # Predictions go to disk as videos; keeping every frame in memory is not needed.
                parser.set_defaults({"return_predictions": False})
            if subcommand in ("test", "validate"):
                parser.set_defaults({"verbose": False})  # after_test/after_validate print the table
            return parser

        def _parse_ckpt_path(self) -> None:
            # Lightning re-applies the checkpoint's init args over the parsed config, so a metric
            # suite chosen on the command line or in a metrics recipe (--model.init_args.test_metrics)
            # would silently fall back to the one the model was trained with. The checkpoint keeps
            # the architecture; what to evaluate comes from this command.
            sub = self.config.get("subcommand")
            chosen: dict[str, Any] = {}
            if sub:
                for key in EVALUATION_ARGS:
                    value = self.config.get(f"{sub}.model.init_args.{key}")
                    if value is not None:
                        chosen[key] = value
            super()._parse_ckpt_path()
            for key, value in chosen.items():
                self.config[f"{sub}.model.init_args.{key}"] = value

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.set_defaults(
                {
                    "trainer.logger": lazy_instance(WandbLogger, project="animzoo", save_dir="runs"),
                    "trainer.callbacks": [
                        {
                            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                            # On every training epoch's end, not only after validation: with
                            # check_val_every_n_epoch > 1 the epochs after the last validation
                            # were never saved (a 60-epoch run validated every 8 ended at 56).
                            "init_args": {"save_last": True, "save_on_train_epoch_end": True},
                        }
                    ],
                    "trainer.default_root_dir": "runs",
                }
            )

        def before_predict(self) -> None:
            from animzoo.methods.base import VideoPredictionWriter

            config = self.config.get(str(self.subcommand), self.config)
            writers = [c for c in self.trainer.callbacks if isinstance(c, VideoPredictionWriter)]
            if not writers:
                output_dir = config.get("output_dir") or run_dir(self.trainer) / "predictions"
                writer = VideoPredictionWriter(str(output_dir), fps=float(config.get("fps") or 25.0))
                self.trainer.callbacks.append(writer)
            elif config.get("output_dir"):
                for writer in writers:
                    writer.output_dir = Path(config["output_dir"])

        def after_predict(self) -> None:
            from animzoo.methods.base import VideoPredictionWriter

            for writer in self.trainer.callbacks:
                if isinstance(writer, VideoPredictionWriter) and self.trainer.is_global_zero:
                    print(f"wrote {len(writer.written)} videos to {writer.output_dir}")

        def after_fit(self) -> None:
            checkpoint = self.trainer.checkpoint_callback
            if self.trainer.is_global_zero and checkpoint is not None:
                last = getattr(checkpoint, "last_model_path", "") or checkpoint.best_model_path
                if last:
                    print(f"checkpoint: {last}")

        def after_test(self) -> None:
            self._report("test")

        def after_validate(self) -> None:
            self._report("val")

        def _report(self, prefix: str) -> None:
            model = self.model
            metrics = dict(getattr(model, "test_results", {}) or {})
            if not metrics:  # a LightningModule that is not an AnimationModule
                metrics = {
                    k: float(v) for k, v in sorted(self.trainer.callback_metrics.items())
                    if k.startswith(f"{prefix}/")
                }
            # Every rank resolves the run folder: a logger's version can be a collective call.
            folder = run_dir(self.trainer)
            if not self.trainer.is_global_zero:
                return
            write_metrics_report(
                metrics, folder, type(model).__name__,
                status=getattr(model, "test_status", None),
                per_video=getattr(model, "test_per_video", None),
            )

    _CLI_CLASS = (AnimZooCLI, RunConfigCallback)
    return _CLI_CLASS


def write_metrics_report(
    metrics: dict[str, float],
    folder: Path,
    method: str,
    status: dict[str, str] | None = None,
    per_video: dict[str, dict[str, float]] | None = None,
) -> Path:
    """Print ``metrics`` as a table; write ``folder/metrics.json`` (values, and the status of
    every metric: what it loaded or why it is NaN) and, when given, ``folder/per_video.csv``
    (one row per test video, one column per per-frame metric). Both are written atomically."""
    from rich.console import Console
    from rich.table import Table

    from animzoo.io import atomic_write

    status = dict(status or {})
    table = Table(title=f"{method}: metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console = Console()
    console.print(table)
    for name, text in sorted(status.items()):
        if not text.startswith("ok"):
            console.print(f"[yellow]{name}[/yellow]: {text}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.json"
    report = {"method": method, "metrics": metrics, "status": status}
    text = json.dumps(report, indent=2, allow_nan=True) + "\n"  # NaN: unavailable metrics
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
    print(f"metrics: {path}")
    if per_video:
        columns = sorted({k for row in per_video.values() for k in row})
        csv_path = folder / "per_video.csv"
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["video_id", *columns])
        for video in sorted(per_video):
            row = per_video[video]
            writer.writerow([video, *(f"{row[c]:.6g}" if c in row else "" for c in columns)])
        atomic_write(csv_path, lambda handle: handle.write(buffer.getvalue().encode("utf-8")))
        print(f"per-video metrics: {csv_path}")
    return path


def run_lightning_cli(argv: Sequence[str], *, from_sys_argv: bool = False) -> int:
    """``animzoo fit|validate|test|predict ...``: LightningCLI over the animzoo methods."""
    configure_wandb_mode()
    from lightning.pytorch import LightningModule

    import animzoo.data
    import animzoo.methods  # noqa: F401  (registers every method: --model MonkeyNet)
    import animzoo.perception  # noqa: F401  (and the perception models: --model LandmarkDetectorModule)
    from animzoo.data import AnimationDataModule
    from animzoo.errors import AnimzooInputError

    cli_class, config_callback = _cli_class()
    try:
        # Any LightningModule: the methods and the perception models (landmark detector,
        # identity embedder) train and test through the same commands.
        cli_class(
            LightningModule,
            AnimationDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_callback=config_callback,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "omegaconf", "version": __version__},
            seed_everything_default=0,
            args=None if from_sys_argv else list(argv),
        )
    except AnimzooInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
