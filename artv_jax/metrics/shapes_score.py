"""Scores generated shapes-world videos: the inverse of the renderer in `shapes.py`.

Reads each frame back into the world's terms (background, object colour, shape,
position, number of objects) and says whether a video follows its caption, moves
at 1 px/frame in the captioned direction, and stays coherent over a long rollout:

    from artv_jax.metrics import shapes_score
    shapes_score.read_frame(frame)                     # one (S, S, 3) frame -> dict
    shapes_score.read_video(video)                     # (T, S, S, 3) -> per-frame series + summary
    shapes_score.score_video(video, "a red square moving left on a black background")
    shapes_score.drift_curve(video, attributes)        # per-frame arrays, for plots against t
    shapes_score.score_batch(videos, captions)         # means, what training and the README report

Frames are uint8 (or any integer type) in 0..255, or float with an explicit
`value_range` ((-1, 1) is the model range of `pixels.to_model_range`; (0, 1)
also works): a float video read with the wrong range would be silently misread,
so no range is guessed. S = 32 and S = 64 (any S >= 8) are read alike; lengths
scale with the box side `b = shapes.box_size(S)`.

How a frame is read (distances are Euclidean in RGB, 0..255 units):

- Background: per-channel median of the 4S - 4 border pixels (the object covers
  at most 2b - 1 of them, under a sixth), then the nearest palette background.
- Candidate pixels: farther than `OBJECT_THRESHOLD` = 80 from that median. The
  closest object/background pair of the palette (blue on gray) is 160 apart, so
  at sigma = 10 gaussian noise a background pixel would need 8 sigma to pass.
- Objects: 4-connected components of candidates; components smaller than
  `MIN_OBJECT_FRACTION` * b^2 pixels (4 at S = 32, 16 at S = 64) are specks and
  ignored. `num_objects` counts the rest; the largest is "the object".
- Colour: per-channel median of the object's core, its pixels at least
  `CORE_FRACTION` = 3/4 of its largest distance from the background (blurred
  edges are blends and fall below), then the nearest palette colour.
- Object pixels: those of the component more object than background, i.e.
  whose projection on the background -> colour axis passes half way. A fixed
  threshold cannot do this: after a 3x3 blur the ring just outside an edge is a
  1/3 blend, 110 from a white background for green (in) but 53 from gray for
  blue (out); half way keeps every straight edge where it was.
- Box (x0, y0, x1, y1, inclusive): the rows and columns holding at least
  `EDGE_PIXELS` = 2 object pixels, so a one-pixel noise bump does not stretch
  it (the triangle's tip row has 2). Fill = area / box area (can pass 1 by a
  bump); centroid = mean pixel position (x = column, y = row).
- Shape, from the exact masks of `shapes.shape_mask(shape, b)`:
  balance = (centroid row - box centre row) / box height is 0 for the square and
  circle and 0.133 for the up-pointing triangle (b = 10; 0.15 at b = 20), which
  is wider at the bottom. balance > half the triangle's -> triangle; below minus
  that -> None (pointing down: no shape of the world). Otherwise the fill ratio
  decides: at least the square/circle midpoint (0.90 at b = 10) -> square, at
  least the circle/triangle midpoint (0.70) -> circle, else None.
- No object: area 0 and colour, shape, box and centroid undefined (None in
  `read_frame`, NaN / -1 in the arrays).

Two strict scores say whether a frame is a clean picture of the world and a
video moves as the world does:

- A clean frame: exactly one component of at least 4 pixels (at S = 32) that
  are farther than `CLEAN_THRESHOLD` = 60 from the background (grain that
  nearly passes for an object counts), background and object colour within
  `CLEAN_PALETTE` = 40 of the palette in every channel, and area within
  `CLEAN_AREA` = 25% of the caption's shape's area.
- On track: the centroid stays within `TRACK_TOLERANCE` = 1.5 px of the
  world's trajectory started at the object's own frame-0 position (its
  centroid less the shape's centroid offset, rounded), over the first
  `TRACK_FRAMES` = 16 frames. Text-to-video has no given start; this checks
  its motion (direction, speed, bounces) against the world all the same.
- Travel: at every frame step the centroid moves at least `TRAVEL_MIN` =
  0.5 px the true track's way along each axis the track moves on (under it
  along the others); the true track is the exact one where the start is given
  (image-to-video), else the own-start track. Over a long rollout it says
  whether the object keeps moving and bouncing as captioned.
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import Any, Sequence

import numpy as np
from scipy import ndimage  # a dependency of jax, so always installed with this package

from artv_jax.data import shapes

# ---- Thresholds (documented in the module docstring) ----
OBJECT_THRESHOLD = 80.0       # RGB distance from the background above which a pixel is object
MIN_OBJECT_FRACTION = 0.04    # components below this fraction of b*b pixels are specks
EDGE_PIXELS = 2               # a row / column of the box holds at least this many object pixels
CORE_FRACTION = 0.75          # object colour: pixels at >= this fraction of the farthest one's distance
WALL_TOLERANCE = 1            # px: a box edge this close to the canvas edge touches the wall
DIRECTION_MOVES = 4           # at most this many first moves decide the initial direction
MIN_MOVE = 0.25               # px/frame: slower mean motion along the axis is "not moving"
TRUE_SPEED = 1.0              # px/frame at every canvas size (shapes.VELOCITIES)
CLEAN_THRESHOLD = 60.0        # clean frames: a component is pixels farther than this from the background
CLEAN_PALETTE = 40.0          # clean frames: background and object colour within this of the palette, per channel
CLEAN_AREA = 0.25             # clean frames: area within this fraction of the caption's shape area
TRACK_TOLERANCE = 1.5         # px: the centroid's largest distance from the true track for a video to be on track
TRACK_FRAMES = 16             # frames over which the own-start track is checked
TRAVEL_MIN = 0.5              # px: a step goes the track's way when it moves at least this along the track's axes
DRIFT_FRAMES = (16, 64, 256)  # 1-based frame numbers at which score_batch reports drift
_CHUNK_PIXELS = 1 << 22       # frames are read in chunks of about this many pixels (bounded memory)

_BG_NAMES = tuple(shapes.BACKGROUNDS)
_BG_RGB = np.array(list(shapes.BACKGROUNDS.values()), np.float32)
_COLOUR_NAMES = tuple(shapes.COLOURS)
_COLOUR_RGB = np.array(list(shapes.COLOURS.values()), np.float32)
# 4-connectivity inside a frame and none across frames, so a stack is labelled in one call.
_STRUCTURE = np.zeros((3, 3, 3), bool)
_STRUCTURE[1] = ndimage.generate_binary_structure(2, 1)


# --------------------------------------------------------------------------
# Inputs: pixels, captions, attributes.
# --------------------------------------------------------------------------


def to_pixels(frames, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Frames (..., S, S, 3) -> float32 in 0..255. Integers are 0..255; floats need `value_range`."""
    a = np.asarray(frames)
    if a.ndim < 3 or a.shape[-1] != 3 or a.shape[-2] != a.shape[-3]:
        raise ValueError(f"expected frames (..., S, S, 3) with a square canvas, got shape {a.shape}")
    if a.shape[-2] < 8:
        raise ValueError(f"canvas size must be >= 8 pixels to be scored, got {a.shape[-2]}")
    if a.dtype.kind in "ui":
        if value_range not in (None, (0, 255)):
            raise ValueError(f"integer frames are 0..255; value_range={value_range} does not apply")
        return a.astype(np.float32)
    if value_range is None:
        raise ValueError(f"{a.dtype} frames need value_range: (-1, 1) for the model range "
                         "(pixels.to_model_range) or (0, 1)")
    lo, hi = map(float, value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    return np.clip((a.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0.0, 255.0)


def parse_caption(caption: str) -> dict[str, str]:
    """A caption -> {'colour', 'shape', 'direction', 'background'}; the inverse of `shapes.caption`.

    Strict: the words must be the template's, `CAPTION_TEMPLATE`, with palette names in its slots.
    """
    words = caption.split()
    template = shapes.CAPTION_TEMPLATE.split()
    if len(words) != len(template):
        raise ValueError(f"caption {caption!r} does not follow {shapes.CAPTION_TEMPLATE!r}")
    out = {}
    for word, slot in zip(words, template):
        if slot.startswith("{"):
            out[slot[1:-1]] = word
        elif word != slot:
            raise ValueError(f"caption {caption!r} does not follow {shapes.CAPTION_TEMPLATE!r}")
    return _check_attributes(out)


def _check_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    tables = {"background": shapes.BACKGROUNDS, "colour": shapes.COLOURS, "shape": shapes.SHAPES,
              "direction": shapes.DIRECTIONS}
    for key, table in tables.items():
        if key not in attributes:
            raise ValueError(f"attributes {attributes} lack {key!r}")
        if attributes[key] not in table:
            raise ValueError(f"unknown {key} {attributes[key]!r}; expected one of {list(table)}")
    return dict(attributes)


def _attributes(spec) -> dict[str, Any]:
    """A caption or an attribute dict (e.g. a `generate_example` record) -> checked attributes."""
    if isinstance(spec, str):
        return parse_caption(spec)
    if isinstance(spec, dict):
        return _check_attributes(spec)
    raise TypeError(f"expected a caption string or an attribute dict, got {type(spec).__name__}")


@functools.cache
def geometry(size: int) -> dict[str, Any]:
    """Exact per-shape area, fill ratio and balance at canvas `size`, and the thresholds built on them."""
    b = shapes.box_size(size)
    area, fill, balance, centre = [], [], [], []
    for shape in shapes.SHAPES:
        rows, cols = np.nonzero(shapes.shape_mask(shape, b))
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        area.append(len(rows))
        fill.append(len(rows) / (h * w))
        balance.append((rows.mean() - (rows.min() + rows.max()) / 2) / h)
        centre.append((cols.mean(), rows.mean()))  # centroid offset from the box's top-left, (x, y)
    sq, ci, tr = (shapes.SHAPES.index(s) for s in ("square", "circle", "triangle"))
    return {
        "b": b, "area": np.array(area, np.float64), "fill": np.array(fill), "balance": np.array(balance),
        "centre": np.array(centre),
        "min_pixels": max(2, round(MIN_OBJECT_FRACTION * b * b)),
        "square_fill": (fill[sq] + fill[ci]) / 2,
        "circle_fill": (fill[ci] + fill[tr]) / 2,
        "triangle_balance": balance[tr] / 2,
    }


# --------------------------------------------------------------------------
# Reading frames, vectorised over a stack.
# --------------------------------------------------------------------------


def _group_median(values: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    """Per-group median of values (P, 3) in 0..255, groups 0..n-1 sorted ascending; NaN for empty groups.

    One sort per channel of the keys group + value / 256 (value clipped to 0..255), which orders by
    group, then value, so each group's median sits at a known position.
    """
    counts = np.bincount(group, minlength=n)
    safe = np.maximum(counts, 1)
    starts = np.cumsum(counts) - counts
    lo, hi = starts + (safe - 1) // 2, starts + safe // 2
    out = np.full((n, 3), np.nan)
    if len(group):
        lo, hi = np.minimum(lo, len(group) - 1), np.minimum(hi, len(group) - 1)
        for ch in range(3):
            keys = np.sort(group + np.clip(values[:, ch], 0, 255) / 256.0)
            out[:, ch] = np.where(counts > 0, ((keys[lo] + keys[hi]) / 2 - np.arange(n)) * 256.0, np.nan)
    return out


def _read_stack(px: np.ndarray, keep_masks: bool = False) -> dict[str, np.ndarray]:
    """Reads float 0..255 frames (N, S, S, 3) -> per-frame arrays (N, ...); -1 / NaN where no object."""
    n, s = px.shape[:2]
    geo = geometry(s)
    border = np.concatenate([px[:, 0], px[:, -1], px[:, 1:-1, 0], px[:, 1:-1, -1]], axis=1)
    bg_rgb = np.median(border, axis=1)
    bg_d = np.linalg.norm(bg_rgb[:, None] - _BG_RGB[None], axis=-1)
    diff = px - bg_rgb[:, None, None].astype(np.float32)
    d2 = np.einsum("nyxc,nyxc->nyx", diff, diff)
    fg = d2 > OBJECT_THRESHOLD ** 2

    labels, num = ndimage.label(fg, structure=_STRUCTURE)
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    sizes = np.bincount(flat[where], minlength=num + 1)
    frame_of = np.zeros(num + 1, np.int64)
    frame_of[flat[where]] = where // (s * s)
    big = np.flatnonzero(sizes >= geo["min_pixels"])
    big = big[big > 0]
    num_objects = np.bincount(frame_of[big], minlength=n)
    # Clean frames count components at a lower threshold, so grain that nearly passes for an object counts.
    c_labels, c_num = ndimage.label(d2 > CLEAN_THRESHOLD ** 2, structure=_STRUCTURE)
    c_flat = c_labels.ravel()
    c_where = np.flatnonzero(c_flat)
    c_big = np.bincount(c_flat[c_where], minlength=c_num + 1) >= geo["min_pixels"]
    c_big[0] = False
    c_frame = np.zeros(c_num + 1, np.int64)
    c_frame[c_flat[c_where]] = c_where // (s * s)
    clean_objects = np.bincount(c_frame[c_big], minlength=n)
    key = np.zeros(n, np.int64)  # largest component per frame: max of size * (num + 1) + label
    np.maximum.at(key, frame_of[big], sizes[big] * (num + 1) + big)
    main_label = np.where(key > 0, key % (num + 1), -1)
    region = labels == main_label[:, None, None]  # the largest component, pass 1

    # The object's colour: median of its core, the component's pixels at least CORE_FRACTION of the
    # component's largest distance from the background (blurred edge blends fall below it). Its
    # pixels: those of the component more object than background, i.e. whose projection on the
    # background -> colour axis passes half way (undoes blur halos whatever the contrast).
    d2 = np.where(region, d2, 0.0)
    core = d2 >= CORE_FRACTION ** 2 * d2.max((1, 2))[:, None, None]
    core &= region
    c_idx = np.flatnonzero(core)
    colour_rgb = _group_median(px.reshape(-1, 3)[c_idx], c_idx // (s * s), n)
    r_idx = np.flatnonzero(region)
    r_frame = r_idx // (s * s)
    axis = np.nan_to_num(colour_rgb - bg_rgb)
    blend = np.einsum("pc,pc->p", px.reshape(-1, 3)[r_idx] - bg_rgb[r_frame], axis[r_frame])
    keep = blend > 0.5 * np.einsum("pc,pc->p", axis, axis)[r_frame]
    obj = np.zeros(region.shape, bool)
    obj.reshape(-1)[r_idx[keep]] = True

    area = np.count_nonzero(obj, axis=(1, 2))
    has = area > 0
    safe = np.maximum(area, 1)
    coords = np.arange(s, dtype=np.float64)
    # Box extent: rows / columns holding at least EDGE_PIXELS object pixels, so a one-pixel bump of
    # noise on a side does not stretch the box (the triangle's tip row has 2 pixels).
    row_count, col_count = np.count_nonzero(obj, axis=2), np.count_nonzero(obj, axis=1)
    rows, cols = row_count >= EDGE_PIXELS, col_count >= EDGE_PIXELS
    rows = np.where(rows.any(1, keepdims=True), rows, row_count > 0)  # a one-pixel-thin object
    cols = np.where(cols.any(1, keepdims=True), cols, col_count > 0)
    y0, y1 = rows.argmax(1), s - 1 - rows[:, ::-1].argmax(1)
    x0, x1 = cols.argmax(1), s - 1 - cols[:, ::-1].argmax(1)
    bbox = np.where(has[:, None], np.stack([x0, y0, x1, y1], 1), -1)
    cx = np.where(has, col_count @ coords / safe, np.nan)
    cy = np.where(has, row_count @ coords / safe, np.nan)
    h, w = y1 - y0 + 1, x1 - x0 + 1
    fill = np.where(has, area / (h * w), np.nan)
    balance = np.where(has, (cy - (y0 + y1) / 2) / h, np.nan)
    colour_rgb = np.where(has[:, None], colour_rgb, np.nan)
    col_d = np.linalg.norm(colour_rgb[:, None] - _COLOUR_RGB[None], axis=-1)
    colour_index = np.where(has, np.nan_to_num(col_d, nan=np.inf).argmin(1), -1)

    sq, ci, tr = (shapes.SHAPES.index(x) for x in ("square", "circle", "triangle"))
    tb = geo["triangle_balance"]
    shape_index = np.select(
        [~has, balance > tb, balance < -tb, fill >= geo["square_fill"], fill >= geo["circle_fill"]],
        [-1, tr, -1, sq, ci], -1)

    out = {
        "background_rgb": bg_rgb, "background_index": bg_d.argmin(1), "background_distance": bg_d.min(1),
        "num_objects": num_objects, "clean_objects": clean_objects, "area": area, "bbox": bbox, "fill": fill, "balance": balance,
        "centroid": np.stack([cx, cy], 1), "colour_rgb": colour_rgb, "colour_index": colour_index,
        "colour_distance": np.where(has, col_d.min(1), np.nan),
        "shape_index": shape_index,
    }
    if keep_masks:
        out["foreground_mask"], out["object_mask"] = fg, obj
    return out


def _read_videos(videos, value_range) -> dict[str, np.ndarray]:
    """(N, T, S, S, 3) -> per-frame arrays reshaped to (N, T, ...), read in memory-bounded chunks."""
    a = np.asarray(videos)
    if a.ndim != 5:
        raise ValueError(f"expected videos (N, T, S, S, 3), got shape {a.shape}")
    n, t, s = a.shape[:3]
    if t < 1 or n < 1:
        raise ValueError(f"need at least one video of at least one frame, got shape {a.shape}")
    flat = a.reshape(n * t, s, s, 3)
    step = max(1, _CHUNK_PIXELS // (s * s))
    parts = [_read_stack(to_pixels(flat[i:i + step], value_range)) for i in range(0, n * t, step)]
    return {k: np.concatenate([p[k] for p in parts]).reshape(n, t, *parts[0][k].shape[1:]) for k in parts[0]}


def read_frame(frame, value_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """Reads one (S, S, 3) frame: background, object pixels, colour, area, box, fill, centroid, count, shape.

    Names are palette names; `*_rgb` are measured colours, `*_distance` their RGB
    distance to the named palette colour. With no object, `colour`, `shape`,
    `bbox` (x0, y0, x1, y1 inclusive), `centroid` (x, y) and friends are None.
    """
    px = to_pixels(frame, value_range)
    if px.ndim != 3:
        raise ValueError(f"expected one frame (S, S, 3), got shape {px.shape}")
    r = {k: v[0] for k, v in _read_stack(px[None], keep_masks=True).items()}
    has = bool(r["area"] > 0)

    def defined(value):
        return value if has else None

    return {
        "background": _BG_NAMES[r["background_index"]],
        "background_rgb": tuple(float(v) for v in r["background_rgb"]),
        "background_distance": float(r["background_distance"]),
        "foreground_mask": r["foreground_mask"], "object_mask": r["object_mask"],
        "num_objects": int(r["num_objects"]), "area": int(r["area"]),
        "bbox": defined(tuple(int(v) for v in r["bbox"])),
        "fill": defined(float(r["fill"])), "balance": defined(float(r["balance"])),
        "centroid": defined(tuple(float(v) for v in r["centroid"])),
        "colour": defined(_COLOUR_NAMES[r["colour_index"]]),
        "colour_rgb": defined(tuple(float(v) for v in r["colour_rgb"])),
        "colour_distance": defined(float(r["colour_distance"])),
        "shape": shapes.SHAPES[r["shape_index"]] if r["shape_index"] >= 0 else None,
    }


# --------------------------------------------------------------------------
# Motion and per-video summaries.
# --------------------------------------------------------------------------


def _motion(r: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Initial direction and speed of each video from its centroid series (N, T, 2).

    Rule for the initial direction (the one the caption names):
    1. The axis is the one with the larger total |displacement| over the first
       `DIRECTION_MOVES` moves (a bounce flips the sign, never the axis).
    2. A bounce can only happen from a frame where the box touches a wall on
       that axis, so the moves used are those before the first such frame
       t >= 1 (at most `DIRECTION_MOVES`, at least the first move). "Touches"
       is generous here (within `WALL_TOLERANCE` px): it can only drop moves.
       The sign of their mean displacement is the direction; a mean below
       `MIN_MOVE` px/frame is no direction (-1).
    3. If frame 0 already touches the wall behind that motion, the object may
       have bounced before its first move (the renderer flips first, then moves),
       so the opposite direction is an equally valid reading (`alternative`).
       "Touches" is strict here: box edge on the canvas edge, or the centroid
       putting the exact-size box's edge within 1/2 px of it; so a reversed
       video starting one pixel off the wall is not excused.
    Speed is the mean centroid step length over steps with an object in both
    frames (0 when there is none).
    """
    c, bbox = r["centroid"], r["bbox"]
    n, t = c.shape[:2]
    if t < 2:
        none = np.full(n, -1)
        return {"direction_index": none, "alternative_index": none, "moves_used": np.zeros(n, int),
                "speed": np.zeros(n), "step": np.zeros((n, 0)), "displacement": np.zeros((n, 0, 2))}
    d = c[:, 1:] - c[:, :-1]
    valid = ~np.isnan(d).any(-1)
    d0 = np.where(valid[..., None], d, 0.0)
    k = min(DIRECTION_MOVES, t - 1)
    axis = np.abs(d0[:, :k]).sum(1).argmax(1)  # 0: x, 1: y
    lo = np.take_along_axis(bbox[..., :2], axis[:, None, None], 2)[..., 0]  # x0 or y0, (N, T)
    hi = np.take_along_axis(bbox[..., 2:], axis[:, None, None], 2)[..., 0]
    present = bbox[..., 0] >= 0
    at_wall = present & ((lo <= WALL_TOLERANCE) | (hi >= size - 1 - WALL_TOLERANCE))
    at_wall[:, 0] = False
    first_wall = np.where(at_wall.any(1), at_wall.argmax(1), t)
    n_use = np.clip(np.minimum(k, first_wall), 1, None)
    use = (np.arange(t - 1)[None] < n_use[:, None]) & valid
    along = np.take_along_axis(d0, axis[:, None, None], 2)[..., 0]
    count = use.sum(1)
    mean = (along * use).sum(1) / np.maximum(count, 1)
    moving = (count > 0) & (np.abs(mean) >= MIN_MOVE)
    positive = mean > 0
    direction = np.where(moving, 2 * axis + positive, -1)  # left, right, up, down = 0, 1, 2, 3
    # Frame 0 against the wall behind the motion (rule 3). The centroid test covers a blur-eroded edge
    # (a triangle's two-pixel corner columns vanish); the box test an object larger than b.
    geo = geometry(size)
    shape0 = r["shape_index"][:, 0]
    edge = np.take_along_axis(c[:, 0] - geo["centre"][np.maximum(shape0, 0)], axis[:, None], 1)[:, 0]
    behind_lo = (lo[:, 0] == 0) | (edge <= 0.5)
    behind_hi = (hi[:, 0] == size - 1) | (edge + geo["b"] - 1 >= size - 1.5)
    behind = np.where(positive, behind_lo, behind_hi)
    alternative = np.where(moving & present[:, 0] & behind, 2 * axis + ~positive, -1)
    step = np.where(valid, np.linalg.norm(d0, axis=-1), np.nan)
    speed = np.where(valid.any(1), np.nansum(step, 1) / np.maximum(valid.sum(1), 1), 0.0)
    return {"direction_index": direction, "alternative_index": alternative, "moves_used": count,
            "speed": speed, "step": step, "displacement": d}


def _mode(index: np.ndarray, k: int) -> np.ndarray:
    """Most frequent value in 0..k-1 along axis 1 of (N, T) indices (-1 ignored; ties -> lowest; none -> -1)."""
    counts = (index[..., None] == np.arange(k)).sum(1)
    return np.where(counts.any(1), counts.argmax(1), -1)


def _name(table: Sequence[str], i) -> str | None:
    return table[int(i)] if i >= 0 else None


def read_video(frames, value_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """Reads a (T, S, S, 3) video: per-frame series under 'per_frame' and summaries at the top.

    Summaries: `direction` (initial, see `_motion` for the rule, None if it does
    not move), `direction_options` (directions the video is consistent with:
    two when it starts against the wall behind its motion), `speed` (px/frame),
    `one_object_fraction`, the majority `background`/`colour`/`shape`, and their
    `*_consistency`: fraction of frames agreeing with frame 0's reading.
    """
    a = np.asarray(frames)
    if a.ndim != 4:
        raise ValueError(f"expected one video (T, S, S, 3), got shape {a.shape}")
    r = {k: v[0] for k, v in _read_videos(a[None], value_range).items()}
    m = {k: v[0] for k, v in _motion({k: v[None] for k, v in r.items()}, a.shape[1]).items()}
    direction = _name(shapes.DIRECTIONS, m["direction_index"])
    options = tuple(_name(shapes.DIRECTIONS, i) for i in (m["direction_index"], m["alternative_index"]) if i >= 0)
    per_frame = {
        "background": [_BG_NAMES[i] for i in r["background_index"]],
        "colour": [_name(_COLOUR_NAMES, i) for i in r["colour_index"]],
        "shape": [_name(shapes.SHAPES, i) for i in r["shape_index"]],
        **{k: r[k] for k in ("background_rgb", "background_distance", "colour_rgb", "colour_distance",
                             "num_objects", "area", "bbox", "fill", "balance", "centroid")},
        "displacement": m["displacement"], "step": m["step"],
    }
    return {
        "num_frames": a.shape[0], "size": a.shape[1], "per_frame": per_frame,
        "direction": direction, "direction_options": options, "moves_used": int(m["moves_used"]),
        "speed": float(m["speed"]), "one_object_fraction": float((r["num_objects"] == 1).mean()),
        "background": _BG_NAMES[_mode(r["background_index"][None], len(_BG_NAMES))[0]],
        "colour": _name(_COLOUR_NAMES, _mode(r["colour_index"][None], len(_COLOUR_NAMES))[0]),
        "shape": _name(shapes.SHAPES, _mode(r["shape_index"][None], len(shapes.SHAPES))[0]),
        **{f"{k}_consistency": float((r[f"{k}_index"] == r[f"{k}_index"][0]).mean())
           for k in ("background", "colour", "shape")},
    }


# --------------------------------------------------------------------------
# Scoring against captions.
# --------------------------------------------------------------------------


def _expected(attributes_list, size: int, num_frames: int) -> dict[str, np.ndarray]:
    """Attribute indices (N,) and, where x and y are given, the expected centroid track (N, T, 2)."""
    attrs = [_attributes(a) for a in attributes_list]
    geo = geometry(size)
    track = np.full((len(attrs), num_frames, 2), np.nan)
    for i, a in enumerate(attrs):
        if a.get("x") is not None and a.get("y") is not None:
            corner = shapes.trajectory(int(a["x"]), int(a["y"]), a["direction"], size, num_frames)
            track[i] = corner + geo["centre"][shapes.SHAPES.index(a["shape"])]
    return {
        "background": np.array([_BG_NAMES.index(a["background"]) for a in attrs]),
        "colour": np.array([_COLOUR_NAMES.index(a["colour"]) for a in attrs]),
        "shape": np.array([shapes.SHAPES.index(a["shape"]) for a in attrs]),
        "direction": np.array([shapes.DIRECTIONS.index(a["direction"]) for a in attrs]),
        "track": track,
    }


def _own_track(r: dict[str, np.ndarray], e: dict[str, np.ndarray], size: int) -> np.ndarray:
    """(N, T, 2) the true centroid track started at the object's own frame-0 position; NaN where frame 0 has
    no object.

    The start corner is frame 0's centroid minus the caption's shape's centroid offset, rounded and kept on
    the canvas; from there the world's motion rule (`shapes.trajectory`) with the caption's direction gives
    the track. Text-to-video has no given start, so this is how its motion is checked against the world.
    """
    n, t = r["centroid"].shape[:2]
    geo = geometry(size)
    out = np.full((n, t, 2), np.nan)
    for i in range(n):
        c0 = r["centroid"][i, 0]
        if np.isnan(c0).any():
            continue
        offset = geo["centre"][e["shape"][i]]
        x, y = np.clip(np.round(c0 - offset), 0, size - geo["b"]).astype(int)
        out[i] = shapes.trajectory(int(x), int(y), shapes.DIRECTIONS[e["direction"][i]], size, t) + offset
    return out


def _travel_ok(centroid: np.ndarray, track: np.ndarray) -> np.ndarray:
    """(N, T) float: 1 where the step from the previous frame goes the track's way, 0 where not (or an object
    is missing), NaN at t = 0 and where there is no track.

    The track moves 1 px per frame along each axis it moves on (diagonals on both): a step is right when the
    centroid moves at least TRAVEL_MIN px the same way along every such axis and under it along the others.
    """
    ok = _step_ok(np.diff(centroid, axis=1), np.diff(track, axis=1))
    return np.concatenate([np.full(ok.shape[:1] + (1,), np.nan), ok], axis=1)


def _step_ok(step: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(...,) float from (..., 2) steps: 1 where `step` goes the way of `true` (the travel rule), 0 where not or
    the step is undefined (no object), NaN where `true` is."""
    with np.errstate(invalid="ignore"):
        along = np.where(true != 0, step * np.sign(true) >= TRAVEL_MIN, np.abs(step) < TRAVEL_MIN)
    ok = np.where(np.isnan(step).any(-1), 0.0, along.all(-1).astype(float))
    return np.where(np.isnan(true).any(-1), np.nan, ok)


def _score(videos, attributes_list, value_range, r: dict[str, np.ndarray] | None = None
           ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-video scores (N,) and per-frame curves (N, T) for a stack of videos and their attributes.

    `r`: the videos' `_read_videos` reading, where the caller already has it (else they are read here).
    """
    videos = np.asarray(videos)
    r = _read_videos(videos, value_range) if r is None else r
    n, t, size = videos.shape[:3]
    if len(attributes_list) != n:
        raise ValueError(f"got {n} videos but {len(attributes_list)} attribute sets / captions")
    e = _expected(attributes_list, size, t)
    m = _motion(r, size)
    geo = geometry(size)

    has = r["area"] > 0
    # A vanished object reads as having taken the background's colour, so fading is one continuous curve.
    object_rgb = np.where(has[..., None], r["colour_rgb"], r["background_rgb"])
    curves = {
        "background_ok": r["background_index"] == e["background"][:, None],
        "colour_ok": r["colour_index"] == e["colour"][:, None],
        "shape_ok": r["shape_index"] == e["shape"][:, None],
        "one_object": r["num_objects"] == 1,
        "area_ratio": r["area"] / geo["area"][e["shape"]][:, None],
        "colour_distance": np.linalg.norm(object_rgb - _COLOUR_RGB[e["colour"]][:, None], axis=-1),
        "background_distance": np.linalg.norm(r["background_rgb"] - _BG_RGB[e["background"]][:, None], axis=-1),
        "position_error": np.linalg.norm(r["centroid"] - e["track"], axis=-1),  # NaN without x, y or object
        "speed": np.concatenate([np.full((n, 1), np.nan), m["step"]], 1),
    }
    curves["frame_ok"] = curves["background_ok"] & curves["colour_ok"] & curves["shape_ok"] & curves["one_object"]
    curves["area_error"] = np.abs(curves["area_ratio"] - 1.0)
    # A clean frame is a picture of the world, whatever the caption: one component (at the lower threshold),
    # background and object within CLEAN_PALETTE of the palette in every channel, the caption's shape's area.
    bg_off = np.abs(r["background_rgb"] - _BG_RGB[r["background_index"]]).max(-1)
    colour_off = np.abs(r["colour_rgb"] - _COLOUR_RGB[np.maximum(r["colour_index"], 0)]).max(-1)
    curves["clean"] = ((r["clean_objects"] == 1) & has & (bg_off <= CLEAN_PALETTE)
                       & (np.nan_to_num(colour_off, nan=np.inf) <= CLEAN_PALETTE)
                       & (curves["area_error"] <= CLEAN_AREA))
    own = _own_track(r, e, size)
    curves["track_error"] = np.linalg.norm(r["centroid"] - own, axis=-1)
    # The direction of travel at every step, against the true track where the start is given (image-to-video)
    # and against the own-start track otherwise.
    curves["travel_ok"] = _travel_ok(r["centroid"], np.where(np.isnan(e["track"]), own, e["track"]))

    read = {"background": _mode(r["background_index"], len(_BG_NAMES)),
            "colour": _mode(r["colour_index"], len(_COLOUR_NAMES)),
            "shape": _mode(r["shape_index"], len(shapes.SHAPES))}
    ok = {k: read[k] == e[k] for k in read}
    ok["direction"] = (m["direction_index"] == e["direction"]) | (m["alternative_index"] == e["direction"])
    with np.errstate(all="ignore"):
        position = np.where(np.isnan(e["track"][:, 0, 0]), np.nan,
                            np.nanmean(np.where(np.isnan(curves["position_error"]), size,
                                                curves["position_error"]), 1))
    scores = {
        **{f"{k}_ok": v for k, v in ok.items()},
        "all_ok": ok["background"] & ok["colour"] & ok["shape"] & ok["direction"],
        "speed": m["speed"], "speed_error": np.abs(m["speed"] - TRUE_SPEED),
        "one_object_fraction": curves["one_object"].mean(1),
        "background_fraction": curves["background_ok"].mean(1),
        "colour_fraction": curves["colour_ok"].mean(1),
        "shape_fraction": curves["shape_ok"].mean(1),
        "frame_accuracy": curves["frame_ok"].mean(1),
        "area_error": curves["area_error"].mean(1),
        "colour_distance": curves["colour_distance"].mean(1),
        "position_error": position,
        "clean_fraction": curves["clean"].mean(1),
        "clean_last_quarter": curves["clean"][:, t - max(1, t // 4):].mean(1),
        "on_track": (~np.isnan(curves["track_error"][:, :TRACK_FRAMES]).any(1))
                    & (np.nan_to_num(curves["track_error"][:, :TRACK_FRAMES], nan=np.inf).max(1) <= TRACK_TOLERANCE),
        "read_background": read["background"], "read_colour": read["colour"], "read_shape": read["shape"],
        "read_direction": m["direction_index"], "read_direction_alternative": m["alternative_index"],
    }
    return scores, curves


def score_video(frames, attributes, value_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """Scores one (T, S, S, 3) video against its caption or attribute dict.

    `*_ok`: the majority reading over frames (background, colour, shape) or the
    initial direction (`read_video`) matches; `all_ok`: all four. `speed` and
    `speed_error` = |speed - 1| px/frame; `*_fraction`: fraction of frames that
    agree with the caption; `frame_accuracy`: fraction of frames with everything
    right and exactly one object. Drift: `area_error` = mean |area / exact area - 1|,
    `colour_distance` = mean RGB distance of the object's colour to the caption's
    (a vanished object counts as the background colour), `position_error` = mean
    centroid distance to the exact trajectory when the attributes carry the start
    `x`, `y` (frames without an object count as S px off; NaN without x, y).
    `clean_fraction`: fraction of clean frames, `clean_last_quarter` of the last quarter's; `on_track`: the
    video stays on the track started at its own frame-0 position (both in the module docstring).
    `curves` holds the per-frame arrays of `drift_curve`.
    """
    a = np.asarray(frames)
    if a.ndim != 4:
        raise ValueError(f"expected one video (T, S, S, 3), got shape {a.shape}")
    scores, curves = _score(a[None], [attributes], value_range)
    out: dict[str, Any] = {}
    for k, v in scores.items():
        v = v[0]
        if k == "read_background":
            out[k] = _name(_BG_NAMES, v)
        elif k == "read_colour":
            out[k] = _name(_COLOUR_NAMES, v)
        elif k == "read_shape":
            out[k] = _name(shapes.SHAPES, v)
        elif k.startswith("read_direction"):
            out[k] = _name(shapes.DIRECTIONS, v)
        else:
            out[k] = bool(v) if v.dtype == bool else float(v)
    out["curves"] = {k: v[0] for k, v in curves.items()}
    return out


def drift_curve(frames, attributes, value_range: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Per-frame arrays (T,) of one video against its caption, for plots against the frame index.

    Booleans `clean`, `frame_ok`, `background_ok`, `colour_ok`, `shape_ok`, `one_object`;
    floats `area_ratio` (area / exact area of the caption's shape), `area_error`,
    `colour_distance`, `background_distance`, `position_error` (NaN without x, y)
    `speed` (step from the previous frame; NaN at t = 0), `track_error` (distance from the track started
    at the object's own frame-0 position; NaN without an object) and `travel_ok` (1 where the step from the
    previous frame goes the true track's way, 0 where not; NaN at t = 0).
    """
    return score_video(frames, attributes, value_range)["curves"]


# Per-video scores `score_batch(per_video=True)` returns: 0/1 per video for the accuracies, each video's own
# mean for the rest (travel: over its own frame steps). Two runs scored on the same cases pair video by video.
PER_VIDEO = ("all_accuracy", "shape_accuracy", "direction_accuracy", "frame_accuracy", "clean_fraction",
             "clean_last_quarter", "colour_distance", "area_error", "position_error", "travel_accuracy")


def score_batch(videos, attributes_list, value_range: tuple[float, float] | None = None,
                drift_frames: Sequence[int] = DRIFT_FRAMES, curves: bool = False,
                per_video: bool = False) -> dict[str, Any]:
    """Mean scores of N videos (N, T, S, S, 3) against N captions or attribute dicts.

    Floats: `background_accuracy`, `colour_accuracy`, `shape_accuracy`,
    `direction_accuracy`, `all_accuracy` (fraction of videos with each `*_ok`),
    `speed`, `speed_error`, `one_object_fraction`, `frame_accuracy`, `area_error`,
    `colour_distance`, `position_error` (over videos with x, y; NaN if none),
    `clean_fraction` (clean frames, over all frames), `clean_last_quarter` (over each video's last quarter),
    `track_accuracy` (videos on track), `travel_accuracy` (frame steps going the true track's way: given the
    start x, y, the exact track, else the one started at the object's own frame-0 position; `_travel_ok`),
    and for each 1-based frame number f in `drift_frames` with f <= T:
    `frame_accuracy@f`, `colour_distance@f`, `area_error@f`, `clean@f` (means over videos at
    that frame). With `curves=True`, `curves` holds the per-frame means (T,); with `per_video=True`,
    `per_video` holds the `PER_VIDEO` scores of each video (N,), NaN where a video has none (position without
    x, y; travel without an object in two frames in a row).
    """
    scores, per_frame = _score(videos, list(attributes_list), value_range)
    out: dict[str, Any] = {"num_videos": int(len(scores["speed"]))}
    for k in ("background", "colour", "shape", "direction", "all"):
        out[f"{k}_accuracy"] = float(scores[f"{k}_ok"].mean())
    for k in ("speed", "speed_error", "one_object_fraction", "frame_accuracy", "area_error", "colour_distance",
              "clean_fraction", "clean_last_quarter"):
        out[k] = float(scores[k].mean())
    out["track_accuracy"] = float(scores["on_track"].mean())
    travel = per_frame["travel_ok"]
    out["travel_accuracy"] = float(np.nanmean(travel)) if (~np.isnan(travel)).any() else float("nan")
    pos = scores["position_error"]
    out["position_error"] = float(np.nanmean(pos)) if (~np.isnan(pos)).any() else float("nan")
    t = per_frame["frame_ok"].shape[1]
    for f in drift_frames:
        if 1 <= f <= t:
            out[f"frame_accuracy@{f}"] = float(per_frame["frame_ok"][:, f - 1].mean())
            out[f"colour_distance@{f}"] = float(per_frame["colour_distance"][:, f - 1].mean())
            out[f"area_error@{f}"] = float(per_frame["area_error"][:, f - 1].mean())
            out[f"clean@{f}"] = float(per_frame["clean"][:, f - 1].mean())
    if curves:
        with warnings.catch_warnings():  # all-NaN columns (speed at t = 0, position without x, y) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            out["curves"] = {k: np.nanmean(v.astype(np.float64), 0) for k, v in per_frame.items()}
    if per_video:
        with warnings.catch_warnings():  # a video without a single scored step keeps travel NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            travel_per_video = np.nanmean(travel.astype(np.float64), 1)
        own = {"travel_accuracy": travel_per_video,
               **{f"{k}_accuracy": scores[f"{k}_ok"] for k in ("all", "shape", "direction")}}
        out["per_video"] = {k: np.asarray(own[k] if k in own else scores[k], np.float64) for k in PER_VIDEO}
    return out


def one_step_scores(videos, attributes_list, value_range: tuple[float, float] | None = None) -> dict[str, float]:
    """Scores of teacher-forced videos (N, T, S, S, 3): frame t >= 1 generated from the true frames before it
    (`generate.generate(..., teacher_forced=True)`), so each frame is one step from the truth.

    The attribute dicts must carry the start `x`, `y`. `travel_accuracy`: the steps whose frame moved from the
    true previous position the true way (the travel rule of `_travel_ok`), split into `travel_first` (frame 1:
    every reference is frame 0, only the caption says which way), `travel_bounce` (the true velocity flips at
    this step; NaN if no step does) and `travel_straight` (the others). `position_error`: mean centroid distance
    from the true centroid (a frame without an object counts S px); `on_position`: the fraction of frames
    within TRACK_TOLERANCE of it. `clean_fraction`: clean generated frames. `num_steps`, `num_bounces`: counts.
    """
    a = np.asarray(videos)
    if a.ndim != 5 or a.shape[1] < 2:
        raise ValueError(f"expected videos (N, T >= 2, S, S, 3), got shape {a.shape}")
    attributes_list = list(attributes_list)
    n, t, size = a.shape[:3]
    track = _expected(attributes_list, size, t)["track"]
    if np.isnan(track).any():
        raise ValueError("teacher-forced videos are scored against their true track: every attribute dict needs "
                         "the start x and y.")
    r = _read_videos(a, value_range)
    _, curves = _score(a, attributes_list, value_range, r)
    ok = _step_ok(r["centroid"][:, 1:] - track[:, :-1], np.diff(track, axis=1))  # (N, T-1): step into frame 1..
    first = np.zeros(ok.shape, bool)
    first[:, 0] = True
    bounce = np.zeros(ok.shape, bool)  # the world's bounces after the first step (shapes.bounce_steps, as trained)
    for i, attrs in enumerate(map(_attributes, attributes_list)):
        steps = [k for k in shapes.bounce_steps(int(attrs["x"]), int(attrs["y"]), attrs["direction"], size, t) if k > 1]
        bounce[i, np.asarray(steps, int) - 1] = True
    error = np.nan_to_num(curves["position_error"][:, 1:], nan=float(a.shape[2]))
    mean = lambda x: float(x.mean()) if x.size else float("nan")
    return {
        "travel_accuracy": mean(ok), "travel_first": mean(ok[first]), "travel_bounce": mean(ok[bounce]),
        "travel_straight": mean(ok[~first & ~bounce]),
        "position_error": mean(error), "on_position": mean(error <= TRACK_TOLERANCE),
        "clean_fraction": mean(curves["clean"][:, 1:]),
        "num_steps": float(ok.size), "num_bounces": float(bounce.sum()),
    }


def benchmark(num_videos: int = 144, num_frames: int = 64, size: int = 32, repeats: int = 3) -> float:
    """Best wall time (s) of `score_batch` on exact renders, e.g. for the README."""
    examples = [shapes.generate_example("test", k, size, num_frames) for k in range(num_videos)]
    videos = np.stack([ex["video"] for ex in examples])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        score_batch(videos, examples)
        best = min(best, time.perf_counter() - start)
    return best
