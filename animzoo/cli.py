"""The ``animzoo`` command line.

``animzoo data synth|inspect`` prepare and check datasets. The training commands
(``fit``/``validate``/``test``/``predict`` through LightningCLI) arrive with the trainer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from animzoo import __version__

EPILOG_DATA = """examples:
  animzoo data synth --out data/synthetic-64 --videos 200 --frames 32 --size 64 --seed 0
  animzoo data inspect data/synthetic-64
"""

EPILOG_SYNTH = """examples:
  animzoo data synth --out data/synthetic-64 --videos 200 --frames 32 --size 64 --seed 0
  animzoo data synth --out data/tiny --videos 8 --frames 12 --size 32 --format png

Writes root/train and root/test (split by identity), one <identity>#<clip> video per clip with
its <video>.landmarks.npy and <video>.mesh.npz sidecars, pairs.csv (cross-identity test pairs)
and synthetic.json. The same seed gives the same bytes.
"""

EPILOG_INSPECT = """examples:
  animzoo data inspect data/synthetic-64
  animzoo data inspect ~/data/vox --landmark-count 68
  animzoo data inspect ~/data/moving-gif --frame-shape 256 256   # png strips

Checks every video and sidecar and lists every problem with its file and the fix, instead of
stopping at the first. Exit status 1 when there is any problem.
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="animzoo",
        description="animzoo: a model zoo of one-shot image animation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_DATA,
    )
    parser.add_argument("--version", action="version", version=f"animzoo {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

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
    return parser


def _run_synth(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

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
    for column in ("split", "videos", "frames", "landmarks", "meshes"):
        summary.add_column(column, justify="right" if column != "split" else "left")
    for split, counts in report.splits.items():
        summary.add_row(
            split, str(counts.videos), str(counts.frames), str(counts.landmarks), str(counts.meshes)
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


def main(args: Sequence[str] | None = None) -> int:
    """Run the ``animzoo`` command with ``args`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if args is None else args)
    parser = _build_parser()
    namespace = parser.parse_args(argv)
    return int(namespace.handler(namespace))


if __name__ == "__main__":
    raise SystemExit(main())
