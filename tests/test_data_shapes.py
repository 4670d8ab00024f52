"""The shapes world against docs/shapes_world.md, pixel by pixel, and the `artv_shapes` TFDS build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from artv_jax.data import shapes

REPO = Path(__file__).resolve().parents[1]

# The spec's tables, typed in again here rather than imported.
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
COLOURS = {"red": (230, 25, 25), "green": (25, 200, 25), "blue": (25, 60, 230), "yellow": (240, 220, 20)}


def object_mask(frame: np.ndarray, background: str) -> np.ndarray:
    return (frame != np.array(BACKGROUNDS[background], np.uint8)).any(-1)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) inclusive of the set pixels."""
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max(), ys.max()


def test_palette_and_tables():
    assert shapes.BACKGROUNDS == BACKGROUNDS and shapes.COLOURS == COLOURS
    assert shapes.SHAPES == ("square", "circle", "triangle")
    assert shapes.DIRECTIONS == ("left", "right", "up", "down")
    assert shapes.box_size(32) == 10 and shapes.box_size(64) == 20


def test_shape_masks_exact():
    # Rows of set pixels, worked out by hand from the spec's inequalities for b = 10 (c = 4.5).
    assert shapes.shape_mask("square", 10).sum() == 100
    circle = shapes.shape_mask("circle", 10)  # (u-4.5)^2 + (v-4.5)^2 <= 25
    assert circle.sum(1).tolist() == [4, 8, 8, 10, 10, 10, 10, 8, 8, 4] and circle.sum() == 80
    assert circle[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0]
    triangle = shapes.shape_mask("triangle", 10)  # |u-4.5| <= (v+1)/2, pointing up
    assert triangle.sum(1).tolist() == [2, 2, 4, 4, 6, 6, 8, 8, 10, 10] and triangle.sum() == 60
    assert triangle[0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    # b = 20 (S = 64).
    assert shapes.shape_mask("square", 20).sum() == 400
    assert shapes.shape_mask("triangle", 20).sum(1).tolist() == [2, 2, 4, 4, 6, 6, 8, 8, 10, 10,
                                                                  12, 12, 14, 14, 16, 16, 18, 18, 20, 20]
    assert shapes.shape_mask("circle", 20).sum() == 316
    for shape in shapes.SHAPES:  # symmetric left-right
        m = shapes.shape_mask(shape, 20)
        np.testing.assert_array_equal(m, m[:, ::-1])


def test_rendered_frame_pixel_exact():
    video = shapes.render_video("white", "red", "triangle", "right", x=3, y=5, size=32, num_frames=4)
    assert video.shape == (4, 32, 32, 3) and video.dtype == np.uint8
    tri = shapes.shape_mask("triangle", 10)
    for t in range(4):
        expected = np.empty((32, 32, 3), np.uint8)
        expected[...] = BACKGROUNDS["white"]
        box = expected[5:15, 3 + t:13 + t]
        box[tri] = COLOURS["red"]
        np.testing.assert_array_equal(video[t], expected)
    # Only the palette's two colours appear, and the object keeps its area.
    colours = {tuple(c) for c in video.reshape(-1, 3)}
    assert colours == {BACKGROUNDS["white"], COLOURS["red"]}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("direction,start,axis,expected", [
    ("right", (20, 7), 0, [20, 21, 22, 21, 20, 19, 18, 17]),  # 22 = 32 - 10 is the last x
    ("left", (1, 7), 0, [1, 0, 1, 2, 3, 4, 5, 6]),
    ("up", (7, 2), 1, [2, 1, 0, 1, 2, 3, 4, 5]),
    ("down", (7, 21), 1, [21, 22, 21, 20, 19, 18, 17, 16]),
])
def test_speed_and_bounce(size, direction, start, axis, expected):
    scale = size // 32
    b = shapes.box_size(size)
    if scale == 2:  # same situation against the far edge of the 64 canvas (last position 44)
        expected = [e if e < 10 else e + (size - 32) - (b - 10) for e in expected]
        start = tuple(s if s < 10 else s + (size - 32) - (b - 10) for s in start)
    video = shapes.render_video("black", "green", "square", direction, *start, size=size, num_frames=8)
    positions = np.array([bbox(object_mask(f, "black"))[:2] for f in video])
    np.testing.assert_array_equal(positions[:, axis], expected)
    np.testing.assert_array_equal(positions[:, 1 - axis], start[1 - axis])  # the other coordinate never moves
    assert (np.abs(np.diff(positions[:, axis])) == 1).all()  # 1 px per frame, every frame
    assert all(object_mask(f, "black").sum() == b * b for f in video)  # never leaves the canvas


def test_long_video_stays_on_canvas():
    for k in range(20):
        a = shapes.sample_attributes("train", k)
        video = shapes.render_video(**a, size=32, num_frames=100)
        areas = object_mask(video, a["background"]).sum((1, 2))
        assert (areas == areas[0]).all()


def test_draws_follow_the_documented_seeding():
    for split, seed in (("train", 0), ("test", 1)):
        for k in (0, 1, 999):
            rng = np.random.default_rng([seed, k])
            expected = dict(background=list(BACKGROUNDS)[rng.integers(3)], colour=list(COLOURS)[rng.integers(4)],
                            shape=shapes.SHAPES[rng.integers(3)], direction=shapes.DIRECTIONS[rng.integers(4)],
                            x=int(rng.integers(0, 23)), y=int(rng.integers(0, 23)))
            assert shapes.sample_attributes(split, k, 32) == expected


def test_examples_match_their_captions_and_attributes():
    for k in range(40):
        ex = shapes.generate_example("test", k, size=32, num_frames=16)
        assert ex["caption"] == (f"a {ex['colour']} {ex['shape']} moving {ex['direction']} "
                                 f"on a {ex['background']} background")
        assert ex["index"] == k
        frame0 = ex["video"][0]
        mask = object_mask(frame0, ex["background"])
        assert bbox(mask)[:2] == (ex["x"], ex["y"])
        assert mask.sum() == {"square": 100, "circle": 80, "triangle": 60}[ex["shape"]]
        assert (frame0[mask] == COLOURS[ex["colour"]]).all()
        # First step: along the caption's direction unless at the edge (then away from it).
        (x0, y0), (x1, y1) = (bbox(object_mask(f, ex["background"]))[:2] for f in ex["video"][:2])
        dx, dy = shapes.VELOCITIES[ex["direction"]]
        at_edge = not (0 <= ex["x"] + dx <= 22 and 0 <= ex["y"] + dy <= 22)
        assert (x1 - x0, y1 - y0) == ((-dx, -dy) if at_edge else (dx, dy))


def test_attributes_uniform_and_captions_cover_the_world():
    attrs = [shapes.sample_attributes("train", k) for k in range(3000)]
    for name, values in (("background", BACKGROUNDS), ("colour", COLOURS), ("shape", shapes.SHAPES),
                         ("direction", shapes.DIRECTIONS)):
        counts = np.array([sum(a[name] == v for a in attrs) for v in values])
        expected = len(attrs) / len(values)
        assert (np.abs(counts - expected) < 0.12 * expected).all(), (name, counts)
    xs = np.array([a["x"] for a in attrs])
    assert xs.min() == 0 and xs.max() == 22
    captions = shapes.all_captions()
    assert len(captions) == len(set(captions)) == 144
    assert {w for c in captions for w in c.split()} == set(shapes.VOCABULARY) and len(shapes.VOCABULARY) == 18
    assert max(len(c.split()) for c in captions) == shapes.MAX_CAPTION_WORDS == 9


def test_deterministic_and_split_dependent():
    a, b = shapes.generate_example("train", 7), shapes.generate_example("train", 7)
    np.testing.assert_array_equal(a["video"], b["video"])
    source = shapes.ShapesSource("train", 64, 16)
    assert len(source) == 10_000 and len(shapes.ShapesSource("test")) == 1_000
    assert source[3]["video"].shape == (16, 64, 64, 3)
    train = [shapes.generate_example("train", k)["video"] for k in range(5)]
    test = [shapes.generate_example("test", k)["video"] for k in range(5)]
    assert not any(np.array_equal(x, y) for x, y in zip(train, test))
    with pytest.raises(IndexError):
        source[10_000]
    with pytest.raises(ValueError, match="unknown split"):
        shapes.ShapesSource("validation")
    with pytest.raises(ValueError, match="outside"):
        shapes.render_video("black", "red", "square", "up", 23, 0)


def test_importable_without_tensorflow():
    code = ("import sys; sys.modules['tensorflow'] = None; sys.modules['tensorflow_datasets'] = None\n"
            "from artv_jax.data import shapes, webvid, pipeline\n"
            "assert pipeline.shapes_shard('test', num_examples=8, process_index=0, process_count=1).read(3)\n"
            "try:\n    shapes.builder_class()\nexcept ImportError:\n    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def _build(data_dir: Path):
    builder = shapes.builder("s32", data_dir=str(data_dir), num_frames=4, num_train=6, num_test=3)
    builder.download_and_prepare()
    return builder


def test_tfds_build_is_the_renderer_and_deterministic(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    builder = _build(tmp_path / "a")
    assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == {"train": 6, "test": 3}
    features = builder.info.features
    for split, n in (("train", 6), ("test", 3)):
        ds, direct = builder.as_data_source(split), shapes.ShapesSource(split, 32, 4)
        for k in range(n):
            got, want = ds[k], direct[k]
            assert got["index"] == k  # record k is video k
            np.testing.assert_array_equal(np.stack(got["video"]), want["video"])
            assert got["caption"].decode() == want["caption"]
            for name in ("background", "colour", "shape", "direction"):
                assert features[name].int2str(got[name]) == want[name]
            assert (got["x"], got["y"]) == (want["x"], want["y"])
    # Rebuilding gives byte-identical record files.
    again = _build(tmp_path / "b")
    files = sorted(p.name for p in Path(builder.data_dir).glob("*.array_record-*"))
    assert len(files) == 2
    for name in files:
        assert (Path(builder.data_dir) / name).read_bytes() == (Path(again.data_dir) / name).read_bytes()


def test_builder_configs():
    pytest.importorskip("tensorflow_datasets")
    cls = shapes.builder_class()
    assert [(c.name, c.size, c.num_frames, c.num_train, c.num_test) for c in cls.BUILDER_CONFIGS] == [
        ("s32", 32, 16, 10_000, 1_000), ("s64", 64, 16, 10_000, 1_000)]
    with pytest.raises(ValueError, match="unknown artv_shapes config"):
        shapes.builder("s16")
