"""``animzoo animate --driving-landmarks`` end to end through ``animzoo.cli.main``.

The model is a landmark-driven double saved as a checkpoint: its three "landmarks" are the
centroids of a red, a green and a blue square, and it translates the source by their mean
displacement, so the frames a landmark file drives are known exactly (written losslessly to a
folder of pngs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from animzoo import hub, registry
from animzoo.cli import main
from animzoo.geometry.grid import make_coordinate_grid
from animzoo.io import VideoReader, read_video, write_image, write_video
from animzoo.methods.base import AnimationModule
from animzoo.methods.baselines import SourceCopy

SIZE = 32
SRC = ((10, 10), (10, 18), (18, 14))  # (row, col) of the source's squares
OFFSETS = [(0, 0), (2, 4), (-4, 2), (6, -2)]  # (dy, dx) of the driving landmarks per frame


class SquareLandmarks(AnimationModule):
    """Landmarks = per-channel centroids; prediction = the source rolled by the mean displacement."""

    motion_kind = "landmarks"
    num_landmarks = 3
    requires = frozenset({"landmarks"})

    def __init__(self, image_size: int = SIZE, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_size = image_size
        self.gain = nn.Parameter(torch.ones(1))

    def extract_motion(self, frames: Tensor) -> dict[str, Tensor]:
        grid = make_coordinate_grid(*frames.shape[-2:], dtype=frames.dtype)  # H x W x 2
        weights = frames / frames.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-8)
        return {"value": (weights[..., None] * grid).sum(dim=(-3, -2))}

    def animate_with_motion(self, source: Tensor, source_motion: dict, driving_motion: dict) -> dict:
        h, w = source.shape[-2:]
        shift = (driving_motion["value"] - source_motion["value"]).mean(dim=1)
        px = torch.stack([shift[:, 0] * (w - 1) / 2, shift[:, 1] * (h - 1) / 2], -1).round().long()
        moved = torch.stack([torch.roll(s, (int(p[1]), int(p[0])), (-2, -1)) for s, p in zip(source, px)])
        return {"prediction": (moved * self.gain).clamp(0, 1)}

    def animate(self, batch: dict) -> dict:  # training path: dataset landmarks in the batch
        return self.animate_with_motion(
            batch["source"], {"value": batch["source_landmarks"]}, {"value": batch["driving_landmarks"]}
        )


@pytest.fixture(autouse=True, scope="module")
def _register_double():
    # registered for this module only, so that tests enumerating list_methods() never meet it
    registry.register_method("test_cli_square_landmarks")(SquareLandmarks)
    yield
    registry._REGISTRY.pop("test_cli_square_landmarks", None)


def _blobs(points=SRC) -> np.ndarray:
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    for channel, (r, c) in enumerate(points):
        img[r - 2 : r + 3, c - 2 : c + 3, channel] = 255
    return img


def _landmarks(offsets=OFFSETS, base=SRC, first=(0, 0)) -> np.ndarray:
    """T x 3 x 2 (x, y) pixels of the squares of ``base`` moved by ``first`` + each offset."""
    return np.array([[(c + first[1] + dx, r + first[0] + dy) for r, c in base] for dy, dx in offsets], np.float32)


def _rolled(shifts) -> np.ndarray:
    return np.stack([np.roll(_blobs(), (dy, dx), axis=(0, 1)) for dy, dx in shifts])


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    write_image(tmp_path / "source.png", _blobs())
    np.save(tmp_path / "lm.npy", _landmarks(first=(2, -2)))  # another position than the source's
    module = SquareLandmarks()
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams, _class_path=f"{__name__}.SquareLandmarks")},
        tmp_path / "lm.ckpt",
    )
    hub.save_pretrained(SourceCopy(), tmp_path / "copy", image_size=SIZE)
    return {"source": tmp_path / "source.png", "lm": tmp_path / "lm.npy", "ckpt": tmp_path / "lm.ckpt",
            "copy": tmp_path / "copy", "dir": tmp_path}


def _args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["animate", "--checkpoint", str(files["ckpt"]), "--source", str(files["source"]),
            "--driving-landmarks", str(files["lm"]), "--output", str(out), "--device", "cpu", *extra]


def test_landmark_file_drives_relative_by_default(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    out = files["dir"] / "frames"  # no suffix: a lossless folder of pngs
    assert main(_args(files, out)) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "wrote" in err and "4 frames" in err and "writing at 25 fps" in err
    # relative: frame 0 of the landmarks is the reference, so the squares' offset (2, -2) does not show
    np.testing.assert_array_equal(read_video(out), _rolled(OFFSETS))
    assert main(_args(files, files["dir"] / "absolute", "--no-relative")) == 0
    np.testing.assert_array_equal(read_video(files["dir"] / "absolute"), _rolled([(2 + dy, -2 + dx) for dy, dx in OFFSETS]))


def test_fps_and_mp4_output(files: dict[str, Path]) -> None:
    out = files["dir"] / "talk.mp4"
    assert main(_args(files, out, "--fps", "10")) == 0
    with VideoReader(out) as reader:
        assert reader.num_frames == len(OFFSETS) and reader.fps == pytest.approx(10.0)
        assert (reader.height, reader.width) == (SIZE, SIZE)


def test_landmarks_size_and_source_landmarks(files: dict[str, Path]) -> None:
    # the same motion in pixels of a 64 x 64 frame (pixel centre i of n <-> 2 i / (n - 1) - 1)
    np.save(files["dir"] / "lm64.npy", _landmarks(first=(2, -2)) * np.float32(63 / 31))
    args = _args(files, files["dir"] / "a", "--no-relative", "--landmarks-size", "64x64")
    args[args.index("--driving-landmarks") + 1] = str(files["dir"] / "lm64.npy")
    assert main(args) == 0
    np.testing.assert_array_equal(read_video(files["dir"] / "a"), _rolled([(2 + dy, -2 + dx) for dy, dx in OFFSETS]))
    # source landmarks 4 px right of the squares: absolute motion moves the source 4 px less to the right
    np.save(files["dir"] / "src.npy", _landmarks([(0, 4)])[0])
    assert main(_args(files, files["dir"] / "b", "--no-relative", "--source-landmarks", str(files["dir"] / "src.npy"))) == 0
    np.testing.assert_array_equal(read_video(files["dir"] / "b"), _rolled([(2 + dy, -6 + dx) for dy, dx in OFFSETS]))


def test_side_by_side_plots_the_landmarks(files: dict[str, Path]) -> None:
    out = files["dir"] / "sbs"
    assert main(_args(files, out, "--side-by-side")) == 0
    frames = read_video(out)
    assert frames.shape == (len(OFFSETS), SIZE, 3 * SIZE, 3)
    middle = frames[:, :, SIZE : 2 * SIZE, 0]
    for t, points in enumerate(_landmarks(first=(2, -2))):
        assert sorted(zip(*np.nonzero(middle[t]))) == sorted((int(y), int(x)) for x, y in points)


def test_driving_video_still_works_for_a_landmark_method(files: dict[str, Path]) -> None:
    video = np.stack([np.roll(_blobs(), (2 + dy, -2 + dx), axis=(0, 1)) for dy, dx in OFFSETS])
    write_video(files["dir"] / "driving", video)
    args = _args(files, files["dir"] / "v", "--relative")
    args[args.index("--driving-landmarks") : args.index("--driving-landmarks") + 2] = ["--driving", str(files["dir"] / "driving")]
    assert main(args) == 0
    np.testing.assert_array_equal(read_video(files["dir"] / "v"), _rolled(OFFSETS))


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def _saved(name: str, array: np.ndarray | None):
    def build(files: dict[str, Path], args: list[str]) -> list[str]:
        path = files["dir"] / name
        path.write_bytes(b"") if array is None else np.save(path, array)
        return _replace(args, "--driving-landmarks", str(path))

    return build


NAN = _landmarks()
NAN[2, 0, 1] = np.nan
BAD_INPUTS = {
    "wrong count": (_saved("four.npy", np.zeros((4, 4, 2), np.float32)), "four.npy: has 4 landmarks per frame but method"),
    "nan": (_saved("nan.npy", NAN), "nan.npy: NaN or inf coordinates in frame(s) 2"),
    "2-D": (_saved("flat.npy", _landmarks()[0]), "flat.npy: has shape (3, 2), expected T x L x 2"),
    "empty file": (_saved("empty.npy", None), "empty.npy: not a readable .npy file"),
    "no frames": (_saved("none.npy", np.zeros((0, 3, 2), np.float32)), "none.npy: has no frames"),
    "missing": (lambda f, a: _replace(a, "--driving-landmarks", str(f["dir"] / "gone.npy")), "gone.npy: no such landmarks file"),
    "missing source landmarks": (
        lambda f, a: [*a, "--source-landmarks", str(f["dir"] / "gone.npy")], "Check --source-landmarks",
    ),
    "image-driven method": (
        lambda f, a: [x if x != "--checkpoint" else "--pretrained" for x in _replace(a, "--checkpoint", str(f["copy"]))],
        "source_copy is driven by images, not landmarks",
    ),
    "landmarks size without landmarks": (
        lambda f, a: [*a[: a.index("--driving-landmarks")], "--driving", str(f["source"]),
                      *a[a.index("--driving-landmarks") + 2 :], "--landmarks-size", "64x64"],
        "--landmarks-size is the frame size of --driving-landmarks",
    ),
    "bad fps": (lambda f, a: [*a, "--fps", "-1"], "--fps must be positive"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(files: dict[str, Path], capsys: pytest.CaptureFixture, case: str) -> None:
    build, message = BAD_INPUTS[case]
    out = files["dir"] / "o.mp4"
    code = main(build(files, _args(files, out)))
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--driving", "x.mp4"), "not allowed with argument"),
        (("--landmarks-size", "64by64"), "expected HxW"),
        (("--landmarks-size", "1x64"), "expected HxW"),
    ],
)
def test_usage_errors_exit_2(files: dict[str, Path], capsys: pytest.CaptureFixture, extra, message: str) -> None:
    out = files["dir"] / "o.mp4"
    with pytest.raises(SystemExit) as exit_info:
        main(_args(files, out, *extra))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_neither_driving_nor_landmarks_is_a_usage_error(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    args = _args(files, files["dir"] / "o.mp4")
    del args[args.index("--driving-landmarks") : args.index("--driving-landmarks") + 2]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and "one of the arguments --driving --driving-landmarks is required" in capsys.readouterr().err


def test_help_explains_landmarks(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["animate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--driving-landmarks FILE.npy" in text and "--landmarks-size HxW" in text and "--no-relative" in text
    assert "on with --driving-landmarks" in text
