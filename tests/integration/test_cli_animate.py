"""``animzoo animate`` end to end through ``animzoo.cli.main``: real files in, a real video out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from animzoo import hub, registry
from animzoo.cli import main
from animzoo.io import VideoReader, read_video, write_image, write_video
from animzoo.methods.base import AnimationModule
from animzoo.methods.baselines import SourceCopy

SIZE = 32


class Centroids(AnimationModule):
    """Keypoints = per-channel brightness centroids; prediction = source brightened by the motion."""

    def __init__(self, image_size: int = SIZE, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_size = image_size
        self.gain = nn.Parameter(torch.ones(1))

    def extract_motion(self, frames: Tensor) -> dict[str, Tensor]:
        h, w = frames.shape[-2:]
        if h % 4 or w % 4:
            raise ValueError(f"Centroids cannot process frames of size {h}x{w}: sides must be divisible by 4")
        ys = torch.linspace(-1, 1, h)[:, None].expand(h, w)
        xs = torch.linspace(-1, 1, w)[None, :].expand(h, w)
        weights = frames / frames.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-8)
        return {"value": torch.stack([(weights * xs).sum((-2, -1)), (weights * ys).sum((-2, -1))], -1)}

    def animate_with_motion(self, source: Tensor, source_motion: dict, driving_motion: dict) -> dict:
        shift = (driving_motion["value"] - source_motion["value"]).abs().mean(dim=(1, 2))
        return {"prediction": (source * self.gain + shift[:, None, None, None]).clamp(0, 1)}

    def animate(self, batch: dict) -> dict:
        return self.animate_with_motion(
            batch["source"], self.extract_motion(batch["source"]), self.extract_motion(batch["driving"])
        )


@pytest.fixture(autouse=True, scope="module")
def _register_double():
    # registered for this module only, so that tests enumerating list_methods() never meet it
    registry.register_method("test_cli_centroids")(Centroids)
    yield
    registry._REGISTRY.pop("test_cli_centroids", None)


def _source(size: int = SIZE) -> np.ndarray:
    img = np.full((size, size, 3), 40, np.uint8)
    img[size // 4 : size // 2, size // 4 : size // 2] = (220, 60, 60)
    img[size // 2 :, size // 2 :] = (60, 200, 90)
    return img


def _driving(frames: int = 7) -> np.ndarray:
    out = []
    for t in range(frames):
        img = np.full((SIZE, SIZE, 3), 30, np.uint8)
        img[4 + t : 12 + t, 6 : 14 + t] = (200, 180, 40)
        img[20:28, 2 * t : 2 * t + 8] = (40, 90, 220)
        out.append(img)
    return np.stack(out)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    write_image(tmp_path / "source.png", _source())
    write_video(tmp_path / "driving.mp4", _driving(), fps=12)
    hub.save_pretrained(SourceCopy(), tmp_path / "copy", image_size=SIZE)
    module = Centroids()
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams, _class_path=f"{__name__}.Centroids"),
        },
        tmp_path / "centroids.ckpt",
    )
    return {
        "source": tmp_path / "source.png", "driving": tmp_path / "driving.mp4", "copy": tmp_path / "copy",
        "ckpt": tmp_path / "centroids.ckpt", "dir": tmp_path,
    }


def _args(files: dict[str, Path], out: Path, *extra: str, model: tuple[str, ...] | None = None) -> list[str]:
    model = model or ("--pretrained", str(files["copy"]))
    return ["animate", *model, "--source", str(files["source"]), "--driving", str(files["driving"]),
            "--output", str(out), "--device", "cpu", *extra]


def test_output_keeps_driving_fps_and_length(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    out = files["dir"] / "out" / "result.mp4"
    assert main(_args(files, out)) == 0
    with VideoReader(out) as reader:
        assert reader.num_frames == 7 and reader.fps == pytest.approx(12.0)
        assert (reader.height, reader.width) == (SIZE, SIZE)
        frames = reader.read_all()
    # SourceCopy: every frame is the source (up to H.264 loss)
    assert np.abs(frames.astype(float) - _source()[None]).mean() < 4
    assert "wrote" in capsys.readouterr().err


def test_side_by_side_is_three_panels_wide(files: dict[str, Path]) -> None:
    out = files["dir"] / "sbs.mp4"
    assert main(_args(files, out, "--side-by-side")) == 0
    frames = read_video(out)
    assert frames.shape == (7, SIZE, 3 * SIZE, 3)
    drv = read_video(files["driving"]).astype(float)
    assert np.abs(frames[:, :, :SIZE].astype(float) - _source()[None]).mean() < 6
    assert np.abs(frames[:, :, SIZE : 2 * SIZE].astype(float) - drv).mean() < 6
    assert np.abs(frames[:, :, 2 * SIZE :].astype(float) - _source()[None]).mean() < 6


def test_relative_best_frame_from_a_checkpoint(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    out = files["dir"] / "rel.gif"
    args = _args(files, out, "--relative", "--adapt-scale", "--find-best-frame", "--batch-size", "3",
                 model=("--checkpoint", str(files["ckpt"])))
    assert main(args) == 0
    assert "best frame" in capsys.readouterr().err
    with VideoReader(out) as reader:
        assert reader.num_frames == 7


def test_frame_folder_driving_uses_25_fps_or_fps_flag(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    write_video(files["dir"] / "frames", _driving(3))
    args = _args(files, files["dir"] / "a.mp4")
    args[args.index("--driving") + 1] = str(files["dir"] / "frames")
    assert main(args) == 0
    assert "no frame rate" in capsys.readouterr().err
    with VideoReader(files["dir"] / "a.mp4") as reader:
        assert reader.fps == pytest.approx(25.0) and reader.num_frames == 3
    args[args.index("--output") + 1] = str(files["dir"] / "b.mp4")
    assert main([*args, "--fps", "8"]) == 0
    with VideoReader(files["dir"] / "b.mp4") as reader:
        assert reader.fps == pytest.approx(8.0)


def test_resized_source_warns(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    write_image(files["source"], _source(48))
    out = files["dir"] / "r.mp4"
    assert main(_args(files, out)) == 0
    assert "source image is 48x48 pixels; resized to 32x32" in capsys.readouterr().err
    assert read_video(out).shape == (7, SIZE, SIZE, 3)


def _set(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


BAD_INPUTS = {
    "missing source": (lambda f, a: _set(a, "--source", str(f["dir"] / "missing.png")), "no such source image"),
    "missing driving": (lambda f, a: _set(a, "--driving", str(f["dir"] / "missing.mp4")), "no such driving video"),
    "bad output suffix": (lambda f, a: _set(a, "--output", str(f["dir"] / "o.xyz")), "unsupported output suffix"),
    "unknown pretrained": (lambda f, a: _set(a, "--pretrained", "no.such.model"), "neither a folder nor a named"),
    "no motion api": (lambda f, a: [*a, "--relative"], "source_copy has no explicit motion"),
    "method with pretrained": (
        lambda f, a: [*_set(a, "--pretrained", str(f["ckpt"])), "--method", "source_copy"],
        "--method checks a --checkpoint",
    ),
    "checkpoint of another method": (
        lambda f, a: [*[x if x != "--pretrained" else "--checkpoint" for x in _set(a, "--pretrained", str(f["ckpt"]))],
                      "--method", "source_copy"],
        "checkpoint of 'test_cli_centroids', not of 'source_copy'",
    ),
    "pretrained folder as checkpoint": (
        lambda f, a: [x if x != "--pretrained" else "--checkpoint" for x in a],
        "no such checkpoint file",
    ),
    "bad device": (lambda f, a: _set(a, "--device", "gpu9"), "is not a device"),
    "bad fps": (lambda f, a: [*a, "--fps", "0"], "--fps must be positive"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(files: dict[str, Path], capsys: pytest.CaptureFixture, case: str) -> None:
    build, message = BAD_INPUTS[case]
    args = build(files, _args(files, files["dir"] / "o.mp4"))
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert not (files["dir"] / "o.mp4").exists()


def test_method_refusing_its_input_is_one_line(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    module = Centroids(image_size=30)  # the Animator resizes to 30 px, which the method refuses
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams, _class_path=f"{__name__}.Centroids")},
        files["dir"] / "c30.ckpt",
    )
    args = _args(files, files["dir"] / "o.mp4", "--relative", model=("--checkpoint", str(files["dir"] / "c30.ckpt")))
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "ValueError: Centroids cannot process frames of size 30x30" in err
    assert "Traceback" not in err and not (files["dir"] / "o.mp4").exists()


def test_missing_shipped_weights_say_how_to_make_them(
    files: dict[str, Path], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A package whose weights folder was not built (e.g. a source checkout before export).
    monkeypatch.setattr(hub, "PRETRAINED_DIR", files["dir"] / "no-pretrained-here")
    code = main(_set(_args(files, files["dir"] / "o.mp4"), "--pretrained", "monkeynet.synthetic64"))
    err = capsys.readouterr().err
    assert code == 2 and "python -m animzoo.hub export" in err and "Traceback" not in err


def test_shipped_monkeynet_animates_through_the_cli(files: dict[str, Path]) -> None:
    out = files["dir"] / "shipped.mp4"
    assert main(_set(_args(files, out), "--pretrained", "monkeynet.synthetic64")) == 0
    assert VideoReader(out).num_frames == VideoReader(files["driving"]).num_frames


def test_help_has_examples(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["animate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--find-best-frame" in text and "--side-by-side" in text
