"""Pixel ranges: uint8 frames [0, 255] on the host, float [-1, 1] in the model (VAE input and output).

`to_model_range` maps x -> x / 127.5 - 1 (0 -> -1.0, 255 -> 1.0) and runs on
device; `to_uint8` is its inverse, round((y + 1) * 127.5) clipped to [0, 255],
on the host. `to_uint8(to_model_range(x)) == x` for every uint8 x.
"""

from __future__ import annotations

import numpy as np


def to_model_range(frames):
    """uint8 frames -> float32 in [-1, 1] (use inside the jitted step, works on jax and numpy arrays)."""
    return frames.astype("float32") / 127.5 - 1.0


def to_uint8(frames) -> np.ndarray:
    """[-1, 1] floats (any leading shape, last axis RGB) -> uint8, clipped."""
    frames = np.asarray(frames, np.float32)
    return np.clip(np.round((frames + 1.0) * 127.5), 0, 255).astype(np.uint8)
