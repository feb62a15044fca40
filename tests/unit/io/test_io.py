"""Tests for animzoo.io: real files written to tmp_path and read back through PyAV / Pillow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from animzoo import io
from animzoo.errors import AnimzooInputError, VideoReadError

H, W = 48, 64


def smooth_clip(t: int, h: int = H, w: int = W) -> np.ndarray:
    """T x H x W x 3 uint8: smooth gradients that move, plus a per-frame level (frames are distinct)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, ..., 0] = 40 + 80 * (xx + 2 * i) % w / w + 60 * yy / h
        frames[i, ..., 1] = 60 + 100 * (0.5 + 0.5 * np.sin((xx + yy) / 20 + i / 5))
        frames[i, ..., 2] = 30 + (i * 190) // max(t - 1, 1)  # monotone in time: pins frame order
    return frames


def few_colour_clip(t: int = 7) -> np.ndarray:
    """Clip with 5 colours, and two identical consecutive frames (some writers merge those)."""
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9], [250, 250, 250]], np.uint8)
    idx = np.random.default_rng(0).integers(0, 5, (t, H, W))
    if t > 3:
        idx[3] = idx[2]
    return colours[idx]


def own_frame_matches(decoded: np.ndarray, source: np.ndarray) -> None:
    """Each decoded frame is closest to its own source frame (order preserved)."""
    d = decoded.astype(np.float64)[:, None]
    s = source.astype(np.float64)[None]
    err = np.abs(d - s).mean(axis=(2, 3, 4))  # decoded x source
    assert (err.argmin(axis=1) == np.arange(len(source))).all()


@pytest.fixture(scope="module")
def mp4_150(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    frames = smooth_clip(150)
    path = io.write_video(tmp_path_factory.mktemp("mp4") / "long.mp4", frames, fps=30)
    return path, frames


# ----------------------------------------------------------------------------- names


def test_natural_sort_key_orders_numbers_by_value() -> None:
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame02.png", "a.png"]
    assert sorted(names, key=io.natural_sort_key) == [
        "a.png",
        "Frame1.png",
        "frame02.png",
        "frame2.png",
        "frame10.png",
    ]


def test_list_frame_files_natural_order_images_only(tmp_path: Path) -> None:
    for name in ["f10.png", "f2.PNG", "f1.jpg", ".hidden.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in io.list_frame_files(tmp_path)] == ["f1.jpg", "f2.PNG", "f10.png"]


def test_folder_reads_in_natural_order(tmp_path: Path) -> None:
    frames = smooth_clip(12)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"frame{i}.png")  # frame10 sorts after frame9
    np.testing.assert_array_equal(io.read_video(tmp_path), frames)


# ----------------------------------------------------------------------------- round trips


def test_png_folder_round_trip_exact(tmp_path: Path) -> None:
    frames = smooth_clip(5)
    out = io.write_video(tmp_path / "clip", frames)
    assert sorted(p.name for p in out.iterdir()) == [f"{i:07d}.png" for i in range(5)]
    with io.VideoReader(out) as reader:
        assert (reader.num_frames, reader.height, reader.width, reader.fps) == (5, H, W, None)
        np.testing.assert_array_equal(reader.read_all(), frames)
        np.testing.assert_array_equal(reader.read([4, 0, 4]), frames[[4, 0, 4]])


def test_folder_named_like_a_video_is_read_as_frames(tmp_path: Path) -> None:
    # first-order-model's preprocessed VoxCeleb: folders called <id>.mp4
    frames = smooth_clip(3)
    io.write_video(tmp_path / "frames", frames).rename(tmp_path / "id1#clip.mp4")
    np.testing.assert_array_equal(io.read_video(tmp_path / "id1#clip.mp4"), frames)


def test_png_strip_round_trip_exact(tmp_path: Path) -> None:
    frames = smooth_clip(6)
    path = io.write_video(tmp_path / "strip.png", frames)
    with Image.open(path) as img:
        assert img.size == (6 * W, H)
    assert io.count_frames(path, frame_shape=(H, W)) == 6
    np.testing.assert_array_equal(io.read_video(path, frame_shape=(H, W, 3)), frames)
    np.testing.assert_array_equal(io.read_frames(path, [5, 1], frame_shape=(H, W)), frames[[5, 1]])


def test_gif_round_trip_exact_keeps_duplicate_frames(tmp_path: Path) -> None:
    frames = few_colour_clip(7)
    path = io.write_video(tmp_path / "clip.gif", frames, fps=25)
    with io.VideoReader(path) as reader:
        assert reader.num_frames == 7
        assert reader.fps == pytest.approx(25.0)
        np.testing.assert_array_equal(reader.read_all(), frames)
        np.testing.assert_array_equal(reader.read([6, 2, 3]), frames[[6, 2, 3]])


def test_gif_many_colours_is_close(tmp_path: Path) -> None:
    frames = smooth_clip(4)
    decoded = io.read_video(io.write_video(tmp_path / "c.gif", frames))
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(float) - frames).mean() < 4.0
    own_frame_matches(decoded, frames)


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mkv", ".mov", ".avi"])
def test_lossy_video_round_trip(tmp_path: Path, suffix: str) -> None:
    frames = smooth_clip(20)
    path = io.write_video(tmp_path / f"clip{suffix}", frames, fps=25)
    with io.VideoReader(path) as reader:
        assert (reader.num_frames, reader.height, reader.width) == (20, H, W)
        assert reader.fps == pytest.approx(25.0)
        decoded = reader.read_all()
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(float) - frames).mean() < 3.0
    own_frame_matches(decoded, frames)
    assert io.read_frames(path, [19, 0]).shape == (2, H, W, 3)
    np.testing.assert_array_equal(io.read_frames(path, [19, 0, 7]), decoded[[19, 0, 7]])


@pytest.mark.parametrize("fps", [30.0, 12.5, 30000 / 1001])
def test_mp4_fps_preserved(tmp_path: Path, fps: float) -> None:
    path = io.write_video(tmp_path / "clip.mp4", smooth_clip(8, 16, 16), fps=fps)
    with io.VideoReader(path) as reader:
        assert reader.fps == pytest.approx(fps, rel=1e-6)
        assert reader.num_frames == 8


def test_float_tensor_input_and_tensor_helpers(tmp_path: Path) -> None:
    frames = smooth_clip(3)
    t = io.frames_to_tensor(frames)
    assert t.shape == (3, 3, H, W) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    np.testing.assert_array_equal(io.tensor_to_frames(t), frames)
    # out-of-range values are clamped, 0.5/255 rounding goes to the nearest level
    assert io.tensor_to_frames(torch.tensor([-1.0, 2.0, 0.6 / 255]).view(1, 3, 1, 1)).tolist() == [
        [[[0, 255, 1]]]
    ]
    out = io.write_video(tmp_path / "t", t)
    np.testing.assert_array_equal(io.read_video(out), frames)
    img = io.write_image(tmp_path / "i.png", t[1])
    np.testing.assert_array_equal(io.read_image(img), frames[1])


def test_odd_size_is_padded_with_warning(tmp_path: Path) -> None:
    frames = smooth_clip(4, 33, 45)
    with pytest.warns(UserWarning, match="odd"):
        path = io.write_video(tmp_path / "odd.mp4", frames)
    decoded = io.read_video(path)
    assert decoded.shape == (4, 34, 46, 3)
    assert np.abs(decoded[:, :33, :45].astype(float) - frames).mean() < 3.0


# ----------------------------------------------------------------------------- random access


def test_read_indices_match_read_all_mp4(mp4_150: tuple[Path, np.ndarray]) -> None:
    path, frames = mp4_150
    with io.VideoReader(path) as reader:
        everything = reader.read_all()
        assert everything.shape == frames.shape
        own_frame_matches(everything[::10], frames[::10])
        indices = [148, 3, 77, 3, 149, 0, 100, 26, 25, 24]
        np.testing.assert_array_equal(reader.read(indices), everything[indices])
        np.testing.assert_array_equal(reader.read(np.array([149])), everything[[149]])
        assert reader.read([]).shape == (0, H, W, 3)


def test_read_two_frames_decodes_less_than_whole_clip(mp4_150: tuple[Path, np.ndarray]) -> None:
    path, frames = mp4_150
    with io.VideoReader(path) as reader:
        got = reader.read([120, 131])
        # gop 25: seek to the keyframe before 120, decode ~ one gop, stop at 131
        assert 0 < reader.frames_decoded <= 40
    with io.VideoReader(path) as reader:
        reader.read([5, 140])  # far apart: the reader seeks again instead of decoding 6..140
        assert reader.frames_decoded < 75
    with io.VideoReader(path) as reader:
        reader.read_all()
        assert reader.frames_decoded == 150
        np.testing.assert_array_equal(got, reader.read([120, 131]))


@pytest.mark.parametrize("suffix, muxer", [(".mp4", "mp4"), (".mkv", "matroska")])
def test_stream_starting_late_maps_first_frame_to_index_0(tmp_path: Path, suffix: str, muxer: str) -> None:
    import av  # written by hand: our writer always starts at pts 0

    frames = smooth_clip(30)
    path = tmp_path / f"late{suffix}"
    with av.open(str(path), "w", format=muxer) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = 10
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i + 7  # first frame at 7 / 25 s
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    with io.VideoReader(path) as reader:
        assert reader.num_frames == 30
        everything = reader.read_all()
        own_frame_matches(everything, frames)
        np.testing.assert_array_equal(reader.read([29, 13, 0]), everything[[29, 13, 0]])


def test_iter_chunks_covers_the_clip(mp4_150: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = mp4_150
    with io.VideoReader(path) as reader:
        chunks = list(reader.iter_chunks(64))
        assert [s for s, _ in chunks] == [0, 64, 128]
        assert [len(c) for _, c in chunks] == [64, 64, 22]
        np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), reader.read_all())
    folder = io.write_video(tmp_path / "f", smooth_clip(5))
    with io.VideoReader(folder) as reader:
        assert [(s, len(c)) for s, c in reader.iter_chunks(2)] == [(0, 2), (2, 2), (4, 1)]


def test_webm_counts_frames_by_demuxing(tmp_path: Path) -> None:
    frames = smooth_clip(30)
    path = io.write_video(tmp_path / "clip.webm", frames, fps=25, gop=10)
    assert io.count_frames(path) == 30
    with io.VideoReader(path) as reader:
        everything = reader.read_all()
    with io.VideoReader(path) as reader:
        np.testing.assert_array_equal(reader.read([29, 12, 12]), everything[[29, 12, 12]])
        assert reader.frames_decoded <= 20  # keyframes known from the demux: seek near 12, then 29


# ----------------------------------------------------------------------------- images


def test_read_image_modes(tmp_path: Path) -> None:
    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = io.read_image(tmp_path / "g.png")
    assert out.shape == (H, W, 3) and (out == gray[..., None]).all()

    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, : W // 2, 3] = 255  # left opaque red, right fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = io.read_image(tmp_path / "a.png")
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[0, -1].tolist() == [255, 255, 255]  # composited on white

    pal = Image.fromarray(few_colour_clip(1)[0]).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "p.png"), few_colour_clip(1)[0])

    deep = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 20).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d16.png")
    out = io.read_image(tmp_path / "d16.png")
    assert out.shape == (H, W, 3)
    np.testing.assert_allclose(out[..., 0], np.round(deep / 257.0), atol=1)


# ----------------------------------------------------------------------------- errors


def _raises_naming(path: Path, fn, *args, **kwargs) -> str:
    with pytest.raises(VideoReadError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert str(path) in message
    return message


def test_missing_path(tmp_path: Path) -> None:
    p = tmp_path / "nope.mp4"
    assert "no such file" in _raises_naming(p, io.VideoReader, p)
    assert "no such" in _raises_naming(tmp_path / "x.png", io.read_image, tmp_path / "x.png")


def test_corrupt_and_truncated_mp4(tmp_path: Path, mp4_150: tuple[Path, np.ndarray]) -> None:
    rnd = tmp_path / "random.mp4"
    rnd.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert "corrupt" in _raises_naming(rnd, io.read_video, rnd)
    truncated = tmp_path / "truncated.mp4"
    data = mp4_150[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert "ffmpeg" in _raises_naming(truncated, io.read_frames, truncated, [0])


def test_empty_folder_and_bad_strips(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no frames here")
    assert "no frames" in _raises_naming(empty, io.VideoReader, empty)

    strip = io.write_video(tmp_path / "s.png", smooth_clip(3))
    assert "frame_shape" in _raises_naming(strip, io.VideoReader, strip)
    assert "multiple" in _raises_naming(strip, io.VideoReader, strip, frame_shape=(H, 50))
    assert "multiple" in _raises_naming(strip, io.VideoReader, strip, frame_shape=(H + 1, W))


def test_index_out_of_range_and_unsupported_suffix(tmp_path: Path) -> None:
    folder = io.write_video(tmp_path / "f", smooth_clip(3))
    with io.VideoReader(folder) as reader:
        assert "0..2" in _raises_naming(folder, reader.read, [1, 3])
        _raises_naming(folder, reader.read, [-1])
    gif = io.write_video(tmp_path / "g.gif", few_colour_clip(3))
    _raises_naming(gif, io.read_frames, gif, [3])
    odd = tmp_path / "clip.flv"
    odd.write_bytes(b"FLV")
    assert "unsupported suffix" in _raises_naming(odd, io.VideoReader, odd)
    with pytest.raises(AnimzooInputError, match="unsupported suffix"):
        io.write_video(tmp_path / "clip.flv", smooth_clip(2))


# ----------------------------------------------------------------------------- atomic & deterministic


def _scramble_heap(seed: int) -> None:
    """Leave random bytes in freed heap memory, so that an encoder reading uninitialised
    memory (x264's mb-tree did, on small frames) gives different bytes from run to run."""
    rng = np.random.default_rng(seed)
    junk = [os.urandom(int(n)) for n in rng.integers(1_000, 120_000, 50)]
    del junk


@pytest.mark.parametrize("name", ["a.mp4", "a.gif", "a.webm", "a.png", "folder"])
def test_writes_are_deterministic(tmp_path: Path, name: str) -> None:
    # 34 x 46: not a multiple of 16, where encoders pad internally
    frames = smooth_clip(12, 34, 46) if name != "a.gif" else few_colour_clip(6)

    def tree_bytes(p: Path) -> list[bytes]:
        return [f.read_bytes() for f in sorted(p.iterdir())] if p.is_dir() else [p.read_bytes()]

    written = []
    for run in range(3):
        _scramble_heap(run)
        written.append(tree_bytes(io.write_video(tmp_path / str(run) / name, frames)))
    assert written[0] == written[1] == written[2]
    # and a different clip gives different bytes (the comparison can fail)
    assert tree_bytes(io.write_video(tmp_path / "other" / name, frames[::-1].copy())) != written[0]


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = io.write_video(tmp_path / "clip.mp4", smooth_clip(4))
    before = path.read_bytes()

    def broken(tmp: Path, *args: object) -> None:
        tmp.write_bytes(b"half a video")
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "_encode_video", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        io.write_video(path, smooth_clip(4)[::-1])
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]  # no temporary left behind

    with pytest.raises(AnimzooInputError):
        io.write_video(path, np.zeros((2, 8, 8, 5), np.uint8))  # bad shape: refused before writing
    assert path.read_bytes() == before


def test_rewriting_a_folder_replaces_it(tmp_path: Path) -> None:
    io.write_video(tmp_path / "f", smooth_clip(5))
    new = smooth_clip(2)[::-1].copy()
    io.write_video(tmp_path / "f", new)
    np.testing.assert_array_equal(io.read_video(tmp_path / "f"), new)
    assert sorted(os.listdir(tmp_path)) == ["f"]
