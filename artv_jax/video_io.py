"""Reading and writing videos and images: mp4 through PyAV (no ffmpeg binary needed), gif and png through Pillow.

Frames are uint8 (T, H, W, 3) NumPy arrays; `pixels.to_uint8` converts
model-range [-1, 1] floats.
"""

from __future__ import annotations

import os

import numpy as np


def write_mp4(path: str, frames: np.ndarray, fps: int = 8) -> None:
    """Writes uint8 (T, H, W, 3) frames as H.264 mp4 (yuv420p; odd sizes are padded by one pixel)."""
    import av

    frames = _check(frames)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "17"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_gif(path: str, frames: np.ndarray, fps: int = 8, scale: int = 1) -> None:
    """Writes uint8 (T, H, W, 3) frames as a looping gif, optionally upscaled by an integer factor."""
    from PIL import Image

    frames = _check(frames)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)


def read_video(path: str, max_frames: int | None = None) -> np.ndarray:
    """Reads a video file (mp4, gif, ...) into uint8 (T, H, W, 3)."""
    import av

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no video file at {path!r}.")
    frames = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{path!r} has no decodable video frames.")
    return np.stack(frames)


def read_image(path: str) -> np.ndarray:
    """Reads an image file into uint8 (H, W, 3)."""
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image file at {path!r}.")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def contact_sheet(videos: np.ndarray, every: int = 1) -> np.ndarray:
    """uint8 (N, T, H, W, 3) -> one image: a row per video, every `every`-th frame, 1-pixel gaps."""
    videos = np.asarray(videos)[:, ::every]
    n, t, h, w, _ = videos.shape
    sheet = np.full((n * (h + 1) - 1, t * (w + 1) - 1, 3), 255, np.uint8)
    for i in range(n):
        for j in range(t):
            sheet[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = videos[i, j]
    return sheet


def _check(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be non-empty uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}.")
    return frames
