"""Input-pipeline throughput: training tuples per second per core, shapes world and WebVid-style clips.

    python benchmarks/input_pipeline.py [--batches 40] [--videos 12] [--seconds 3]

Rows of the table (each measured with one producer thread, so "per core"):
  shapes direct      shapes world rendered on demand (the default training source), 32x32 and 64x64
  shapes tfds        the same from a built `artv_shapes` data set (array_record, PNG frames)
  webvid decode      `webvid.decode_clip`: mp4 -> 16 frames at 8 fps, 256x256 (the build's cost per video)
  webvid tfds        tuples from a built `webvid/256` data set (JPEG frames, only R+2 decoded per tuple)
The WebVid-style mp4s are synthetic: 596x336 H.264 at 30 fps (WebVid's low-res
format), a moving textured scene, written with PyAV into a temp dir.
`tuples/cpu-s` divides by the process CPU time, so it stays honest if a
library spreads work over more than one core.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from artv_jax.data import pipeline, shapes, webvid

R = 1  # reference frames per tuple


def tokenize(text: str) -> np.ndarray:
    ids = [zlib.crc32(w.encode()) % 1000 for w in text.split()][:16]
    return np.array(ids + [0] * (16 - len(ids)), np.int32)


def measure(shard: pipeline.HostShard, batches: int, batch: int = 16, stride_range=(1, 3)) -> tuple[float, float]:
    """(tuples per wall second, tuples per CPU second) over `batches` batches after one warm-up batch."""
    with pipeline.TupleIterator(shard, global_batch=batch, tokenize=tokenize, num_ref_frames=R,
                                stride_range=stride_range, seed=0, prefetch=2, num_threads=1) as it:
        next(it)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(it)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = batches * batch
    return n / wall, n / cpu


def write_synthetic_mp4(path: Path, seconds: float, seed: int, fps: int = 30, w: int = 596, h: int = 336) -> None:
    """A textured background panning under two moving discs, H.264 at WebVid's 596x336."""
    import av

    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (h, 2 * w, 3), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) // 3).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for t in range(int(seconds * fps)):
            frame = texture[:, t * 2 % w:t * 2 % w + w].copy()
            for k, colour in enumerate(((230, 40, 40), (40, 40, 230))):
                cx, cy = (w / 2 + 200 * np.sin(t / 20 + k * 2)), (h / 2 + 100 * np.cos(t / 15 + k))
                frame[(xx - cx) ** 2 + (yy - cy) ** 2 < 50 ** 2] = colour
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)
    import tensorflow_datasets as tfds

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in (32, 64):
            rows.append((f"shapes direct {size}x{size}", "T=16, R=1",
                         *measure(pipeline.shapes_shard("train", size, 16, process_index=0, process_count=1),
                                  args.batches)))
        b = shapes.builder("s32", data_dir=str(tmp / "tfds"), num_train=512, num_test=16)
        b.download_and_prepare()
        rows.append(("shapes tfds 32x32", "PNG, array_record",
                     *measure(pipeline.tfds_shard(b, "train", process_index=0, process_count=1), args.batches)))

        manual = tmp / "manual"
        (manual / "videos").mkdir(parents=True)
        lines = ["videoid,contentUrl,duration,page_dir,name"]
        for k in range(args.videos):
            write_synthetic_mp4(manual / "videos" / f"{1000 + k}.mp4", args.seconds, k)
            lines.append(f"{1000 + k},https://example/{k}.mp4,PT00H00M03S,pages,two discs over a texture {k}")
        (manual / "results_bench_train.csv").write_text("\n".join(lines) + "\n")

        paths = sorted((manual / "videos").glob("*.mp4"))
        webvid.decode_clip(paths[0], fps=8, size=256, num_frames=16)  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        for p in paths:
            webvid.decode_clip(p, fps=8, size=256, num_frames=16)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append(("webvid decode_clip 256", "596x336 30fps -> 16 @ 8fps", len(paths) / wall, len(paths) / cpu))

        wb = webvid.builder("256", data_dir=str(tmp / "tfds"))
        wall = time.perf_counter()
        wb.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
        build_s = time.perf_counter() - wall
        rows.append(("webvid build 256", "decode + JPEG + write", len(paths) / build_s, float("nan")))
        rows.append(("webvid tfds 256x256", "JPEG, R+2 frames decoded",
                     *measure(pipeline.tfds_shard(wb, "train", process_index=0, process_count=1),
                              args.batches, batch=4)))

    print(f"\n{'source':26s} {'notes':28s} {'tuples/s':>10s} {'tuples/cpu-s':>13s}")
    for name, notes, per_s, per_cpu in rows:
        unit = "  (clips/s)" if "decode_clip" in name or "build" in name else ""
        print(f"{name:26s} {notes:28s} {per_s:10.1f} {per_cpu:13.1f}{unit}")
    print(f"\n{os.cpu_count()} CPUs; one producer thread per row; batch 16 (webvid tfds: 4, "
          f"{args.videos} clips), R={R}.")


if __name__ == "__main__":
    main()
