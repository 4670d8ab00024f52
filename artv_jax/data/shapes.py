"""The shapes world: the embedded default data set (docs/shapes_world.md).

A NumPy renderer is the single source of truth for every pixel; two readers sit
on top of it and give the same bytes:

- `ShapesSource(split, size, num_frames)`: random access straight from the
  renderer (`len`, `[k]`). What the default training run uses: no build step,
  no TensorFlow.
- The TFDS builder `artv_shapes` (configs `s32`, `s64`; splits train 10,000 /
  test 1,000; nothing downloaded; stored in generation order so record `k` of a
  split is video `k`). For evaluators and anyone who wants files on disk:

      from artv_jax.data import shapes
      b = shapes.builder("s32", data_dir="~/tensorflow_datasets")
      b.download_and_prepare()
      ds = b.as_data_source("test")            # random access: ds[k] is video k

  or, from a shell, `python -m artv_jax.data.shapes --data_dir=D --config=s32`.

Records are written as array_record (random access, what the input pipeline
resumes by); TFDS reads those with `as_data_source` only, so for `as_dataset` /
`tfds.load` build with `builder(..., file_format="tfrecord")`.

TensorFlow and tensorflow_datasets are imported only inside `builder_class()`
(which defines the builder class on first call and registers it with TFDS), so
`import artv_jax.data.shapes` works on machines without TensorFlow.

Randomness: video `k` of a split is drawn from
`np.random.default_rng([SPLIT_SEEDS[split], k])`, in this order: background,
colour, shape, direction (each `Generator.integers(n)` over the tables below, in
table order), then `x`, then `y` (each `Generator.integers(0, S - b + 1)`).
"""

from __future__ import annotations

import argparse
import functools
import math
from typing import Any

import numpy as np

# The palette and attribute tables. Dict/tuple order is the draw order of the
# attribute indices and the ClassLabel order of the TFDS builder.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (25, 200, 25),
    "blue": (25, 60, 230),
    "yellow": (240, 220, 20),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# (dx, dy) in pixels per frame; x is the column, y the row (down is +y).
VELOCITIES: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}

SPLIT_SEEDS: dict[str, int] = {"train": 0, "test": 1}
SPLIT_SIZES: dict[str, int] = {"train": 10_000, "test": 1_000}
DEFAULT_SIZE = 32
DEFAULT_NUM_FRAMES = 16

CAPTION_TEMPLATE = "a {colour} {shape} moving {direction} on a {background} background"


def _check_attribute(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(allowed)}")


def caption(colour: str, shape: str, direction: str, background: str) -> str:
    """The caption of a video; `direction` is its initial direction."""
    _check_attribute("colour", colour, COLOURS)
    _check_attribute("shape", shape, SHAPES)
    _check_attribute("direction", direction, DIRECTIONS)
    _check_attribute("background", background, BACKGROUNDS)
    return CAPTION_TEMPLATE.format(colour=colour, shape=shape, direction=direction, background=background)


def all_captions() -> list[str]:
    """The 3 x 4 x 3 x 4 = 144 captions of the world, in table order."""
    return [caption(c, s, d, bg) for bg in BACKGROUNDS for c in COLOURS for s in SHAPES for d in DIRECTIONS]


def _vocabulary() -> tuple[str, ...]:
    words = ("a", "moving", "on", "background", *COLOURS, *SHAPES, *DIRECTIONS, *BACKGROUNDS)
    used = {w for text in all_captions() for w in text.split()}
    assert used == set(words) and len(words) == len(used), (sorted(used), words)
    return words


# Every word of every caption, each once (18 words): the template's own words,
# then colours, shapes, directions, backgrounds in table order. A word-level
# tokenizer for the tiny model is built on this.
VOCABULARY: tuple[str, ...] = _vocabulary()
MAX_CAPTION_WORDS = len(CAPTION_TEMPLATE.split())  # 9


def box_size(size: int) -> int:
    """Side `b` of the object's bounding box: round(10 * S / 32), halves rounded up."""
    if size < 4:
        raise ValueError(f"canvas size must be >= 4 pixels, got {size}")
    return math.floor(10 * size / 32 + 0.5)


def shape_mask(shape: str, b: int) -> np.ndarray:
    """Boolean (b, b) mask of the box pixels that are set; rows are v, columns u."""
    _check_attribute("shape", shape, SHAPES)
    v, u = np.mgrid[0:b, 0:b].astype(np.float64)
    c = (b - 1) / 2
    if shape == "square":
        return np.ones((b, b), bool)
    if shape == "circle":
        return (u - c) ** 2 + (v - c) ** 2 <= (b / 2) ** 2
    return np.abs(u - c) <= (v + 1) / 2  # triangle, pointing up


def trajectory(x: int, y: int, direction: str, size: int, num_frames: int) -> np.ndarray:
    """Top-left corner (x, y) of the box in each frame, int32 (num_frames, 2).

    Speed 1 px/frame. Before each step, a velocity component whose step would
    take any part of the box outside the canvas is flipped (the object bounces).
    """
    _check_attribute("direction", direction, DIRECTIONS)
    b = box_size(size)
    if not (0 <= x <= size - b and 0 <= y <= size - b):
        raise ValueError(f"start ({x}, {y}) puts the {b}x{b} box outside the {size}x{size} canvas")
    dx, dy = VELOCITIES[direction]
    out = np.empty((num_frames, 2), np.int32)
    for t in range(num_frames):
        if t:
            if not 0 <= x + dx <= size - b:
                dx = -dx
            if not 0 <= y + dy <= size - b:
                dy = -dy
            x, y = x + dx, y + dy
        out[t] = x, y
    return out


def bounce_steps(x: int, y: int, direction: str, size: int, num_frames: int) -> list[int]:
    """The frames i >= 1 whose step from frame i - 1 goes another way than the step before it (the object
    bounced; at i = 1, another way than the caption's direction: it started against a wall)."""
    corners = trajectory(x, y, direction, size, num_frames)
    steps = np.concatenate([np.asarray(VELOCITIES[direction], np.int32)[None], np.diff(corners, axis=0)])
    return [int(i) for i in np.flatnonzero((steps[1:] != steps[:-1]).any(-1)) + 1]


def render_video(
    background: str,
    colour: str,
    shape: str,
    direction: str,
    x: int,
    y: int,
    size: int = DEFAULT_SIZE,
    num_frames: int = DEFAULT_NUM_FRAMES,
) -> np.ndarray:
    """Renders one video: uint8 (num_frames, size, size, 3), flat colours, hard edges."""
    _check_attribute("background", background, BACKGROUNDS)
    _check_attribute("colour", colour, COLOURS)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    b = box_size(size)
    mask = shape_mask(shape, b)
    positions = trajectory(x, y, direction, size, num_frames)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    frames[...] = BACKGROUNDS[background]
    for t, (px, py) in enumerate(positions):
        frames[t, py:py + b, px:px + b][mask] = COLOURS[colour]
    return frames


def sample_attributes(split: str, k: int, size: int = DEFAULT_SIZE) -> dict[str, Any]:
    """The attributes of video `k` of `split` (see the module docstring for the draw order)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; the shapes world has {sorted(SPLIT_SEEDS)}")
    if not 0 <= k < SPLIT_SIZES[split]:
        raise IndexError(f"video {k} out of range for split {split!r} of {SPLIT_SIZES[split]} videos")
    rng = np.random.default_rng([SPLIT_SEEDS[split], k])
    attrs = {
        "background": list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        "colour": list(COLOURS)[rng.integers(len(COLOURS))],
        "shape": SHAPES[rng.integers(len(SHAPES))],
        "direction": DIRECTIONS[rng.integers(len(DIRECTIONS))],
    }
    last = size - box_size(size)
    attrs["x"] = int(rng.integers(0, last + 1))
    attrs["y"] = int(rng.integers(0, last + 1))
    return attrs


def generate_example(
    split: str, k: int, size: int = DEFAULT_SIZE, num_frames: int = DEFAULT_NUM_FRAMES
) -> dict[str, Any]:
    """Video `k` of `split`: {'video': uint8 (T,S,S,3), 'caption', attributes, 'index': k}."""
    attrs = sample_attributes(split, k, size)
    return {
        "video": render_video(size=size, num_frames=num_frames, **attrs),
        "caption": caption(attrs["colour"], attrs["shape"], attrs["direction"], attrs["background"]),
        **attrs,
        "index": k,
    }


class ShapesSource:
    """Random-access view of a split, rendered on demand (no build, no TensorFlow).

    `source[k] == generate_example(split, k, size, num_frames)`; `len(source)` is
    the split size, or `num_examples` (a prefix of the split) when given.
    """

    def __init__(self, split: str, size: int = DEFAULT_SIZE, num_frames: int = DEFAULT_NUM_FRAMES,
                 num_examples: int | None = None):
        if split not in SPLIT_SIZES:
            raise ValueError(f"unknown split {split!r}; the shapes world has {sorted(SPLIT_SIZES)}")
        full = SPLIT_SIZES[split]
        if num_examples is not None and not 0 < num_examples <= full:
            raise ValueError(f"num_examples must be in 1..{full} for split {split!r}, got {num_examples}")
        box_size(size)  # validates size
        self.split, self.size, self.num_frames = split, size, num_frames
        self._len = full if num_examples is None else num_examples

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k: int) -> dict[str, Any]:
        k = int(k)
        if not 0 <= k < self._len:
            raise IndexError(f"index {k} out of range for a source of {self._len} videos")
        return generate_example(self.split, k, self.size, self.num_frames)

    def __repr__(self) -> str:
        return f"ShapesSource({self.split!r}, size={self.size}, num_frames={self.num_frames}, len={self._len})"


# --------------------------------------------------------------------------
# TFDS builder `artv_shapes`, defined on first use so TensorFlow stays optional.
# --------------------------------------------------------------------------


@functools.cache
def builder_class():
    """Defines (once) and returns the TFDS builder class `ArtvShapes`; imports tensorflow_datasets.

    Defining the class registers `artv_shapes` with TFDS, after which
    `tfds.builder("artv_shapes/s32", data_dir=...)` also works.
    """
    import dataclasses

    import tensorflow_datasets as tfds
    from etils import epath

    @dataclasses.dataclass
    class ShapesConfig(tfds.core.BuilderConfig):
        """Canvas size, video length and split sizes of one `artv_shapes` variant."""
        size: int = DEFAULT_SIZE
        num_frames: int = DEFAULT_NUM_FRAMES
        num_train: int = SPLIT_SIZES["train"]
        num_test: int = SPLIT_SIZES["test"]

    class ArtvShapes(tfds.core.GeneratorBasedBuilder):
        """Moving flat-colour shapes with captions, rendered exactly per docs/shapes_world.md."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "First release, SHAPES_WORLD.md."}
        BUILDER_CONFIGS = [
            ShapesConfig(name="s32", description="32x32 canvas, 16 frames.", size=32),
            ShapesConfig(name="s64", description="64x64 canvas, 16 frames.", size=64),
        ]
        DEFAULT_CONFIG_NAME = "s32"
        # TFDS 4.9.10 infers this via `importlib_resources`, which new `etils`
        # no longer installs; naming the file directly sidesteps that import.
        code_path = epath.Path(__file__)

        def __init__(self, *, file_format=None, **kwargs):
            # array_record gives random access (`as_data_source`), which the
            # input pipeline needs for exact resume; tfrecord still works.
            super().__init__(file_format=file_format or "array_record", **kwargs)

        def _info(self):
            cfg = self.builder_config
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({
                    "video": tfds.features.Video(shape=(cfg.num_frames, cfg.size, cfg.size, 3)),
                    "caption": tfds.features.Text(),
                    "background": tfds.features.ClassLabel(names=list(BACKGROUNDS)),
                    "colour": tfds.features.ClassLabel(names=list(COLOURS)),
                    "shape": tfds.features.ClassLabel(names=list(SHAPES)),
                    "direction": tfds.features.ClassLabel(names=list(DIRECTIONS)),
                    "x": np.int32,
                    "y": np.int32,
                    "index": np.int32,
                }),
                supervised_keys=None,
                homepage="https://arxiv.org/abs/2311.18834",
                # Record k of a split is video k: same order as ShapesSource.
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            cfg = self.builder_config
            return {"train": self._generate_examples("train", cfg.num_train),
                    "test": self._generate_examples("test", cfg.num_test)}

        def _generate_examples(self, split, num_examples):
            cfg = self.builder_config
            if not 0 < num_examples <= SPLIT_SIZES[split]:
                raise ValueError(f"{split}: num_examples must be in 1..{SPLIT_SIZES[split]}, got {num_examples}")
            for k in range(num_examples):
                ex = generate_example(split, k, cfg.size, cfg.num_frames)
                ex["video"] = [_encode_png(frame) for frame in ex["video"]]
                yield k, ex

    return ArtvShapes


def builder(config: str = "s32", *, data_dir: str | None = None, num_frames: int | None = None,
            num_train: int | None = None, num_test: int | None = None, **kwargs):
    """An `artv_shapes` builder instance; imports tensorflow_datasets.

    `config` is `s32` or `s64`. Overriding `num_frames`, `num_train` or
    `num_test` (e.g. a small build in tests) makes a custom config whose name
    records the overrides, so it never mixes with the standard builds on disk.
    Extra kwargs go to the TFDS builder (e.g. `file_format`).
    """
    cls = builder_class()
    base = {c.name: c for c in cls.BUILDER_CONFIGS}
    if config not in base:
        raise ValueError(f"unknown artv_shapes config {config!r}; expected one of {sorted(base)}")
    cfg = base[config]
    overrides = {k: v for k, v in dict(num_frames=num_frames, num_train=num_train, num_test=num_test).items()
                 if v is not None}
    if overrides:
        import dataclasses

        name = config + "".join(f"_{k.replace('num_', '')}{v}" for k, v in sorted(overrides.items()))
        cfg = dataclasses.replace(cfg, name=name, description=f"{cfg.description} Overrides: {overrides}.",
                                  **overrides)
    return cls(config=cfg, data_dir=data_dir, **kwargs)


def _encode_png(frame: np.ndarray) -> bytes:
    """Lossless, deterministic PNG bytes of one uint8 (H, W, 3) frame (PIL, no TensorFlow)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, format="png", compress_level=6)
    return buf.getvalue()


def main(argv=None) -> None:
    """`python -m artv_jax.data.shapes --data_dir=D [--config=s32]`: builds `artv_shapes` on disk."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--config", default="s32", choices=["s32", "s64"])
    args = parser.parse_args(argv)
    from artv_jax.data import shapes  # not `__main__`: TFDS names the builder after its module

    b = shapes.builder(args.config, data_dir=args.data_dir)
    b.download_and_prepare()
    print(f"artv_shapes/{args.config}: {dict((s, i.num_examples) for s, i in b.info.splits.items())} in {b.data_dir}")


if __name__ == "__main__":
    main()
