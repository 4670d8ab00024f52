"""WebVid from a local download: PyAV clip decoding and the TFDS builder `webvid`.

Nothing is downloaded. Put the results CSV (`videoid,contentUrl,duration,
page_dir,name`) and the mp4 files in one directory, the TFDS `manual_dir`:

    manual_dir/
      results_2M_train.csv           # split `train` (first file matching *train*.csv)
      results_2M_val.csv             # split `validation` (*val*.csv), optional
      <page_dir>/<videoid>.mp4       # as the WebVid download scripts store them,
      videos/<videoid>.mp4           # ... or flat; both layouts are accepted

Each kept video gives one example: the first `num_frames` frames resampled to
`fps` (each output frame is the source frame shown at that instant), short side
resized to `size` (swscale area filter) and centre-cropped to `size x size`,
stored as JPEG frames in a `tfds.features.Video`, with the caption (`name`) and
the `videoid`, in array_record files (random access: `as_data_source`; pass
`file_format="tfrecord"` to `builder` for `as_dataset`). Configs: `256` (default: 256x256, 8 fps, 16 frames) and `tiny`
(32x32, 8 fps, 8 frames, PNG; for tests). Any field can be overridden in
`builder(...)`.

A bad row or file never stops a build: it is skipped and counted under one
of `SKIP_REASONS`. The counts of each split are logged at the end of the split
and stored in the dataset's `metadata.json` (`builder.info.metadata["report"]`).

Building in one process (decoding is ~all of the cost, ~1 core per process):

    python -m artv_jax.data.webvid build --manual_dir=M --data_dir=D --config=256

Building in parallel: a CSV row belongs to shard `crc32(videoid) % num_shards`
(a malformed row: its row number modulo `num_shards`), so duplicate rows land
in the same shard and are caught there. Run one process per shard, on one
machine or on many sharing `D`, then merge the shard datasets into the normal
`webvid/256` one:

    for i in $(seq 0 15); do
      python -m artv_jax.data.webvid build --manual_dir=M --data_dir=D --config=256 \\
          --num_shards=16 --shard_index=$i &
    done; wait
    python -m artv_jax.data.webvid merge --data_dir=D --config=256 --num_shards=16

Every shard must keep at least one video of every split (TFDS cannot store an
empty split). Shard `i` is the dataset `webvid/256_shard{i:05d}of{n:05d}`; `merge` moves its
record files into `webvid/256` (no re-encoding), sums the skip counts and
deletes the emptied shard datasets.

`decode_clip` and the CSV/row logic (`generate_clips`) need only PyAV and NumPy;
tensorflow_datasets is imported inside `builder_class()`, `builder()` and
`merge_shards()`.
"""

from __future__ import annotations

import argparse
import collections
import csv
import functools
import io
import json
import logging
import os
import re
import shutil
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

CSV_FIELDS = ("videoid", "contentUrl", "duration", "page_dir", "name")
SKIP_REASONS = (
    "bad_csv_row",        # unparsable line, wrong number of fields, empty/odd videoid, page_dir or name
    "duplicate_videoid",  # a videoid seen before in this shard (the first is kept)
    "missing_file",       # no mp4 in either layout
    "empty_file",         # zero bytes
    "unreadable",         # PyAV cannot open it (not a video, or truncated before its index) or no video stream
    "truncated",          # opens, but decoding fails or ends before the clip although the header says it is long enough
    "too_short",          # shorter than the clip (num_frames at fps)
)
DEFAULT_SPLIT_CSVS = {"train": "*train*.csv", "validation": "*val*.csv"}
_VIDEOID = re.compile(r"^[A-Za-z0-9_-]+$")

log = logging.getLogger(__name__)


class ClipError(Exception):
    """A video that cannot give a clip; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, message: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason


# --------------------------------------------------------------------------
# Decoding (PyAV + NumPy only).
# --------------------------------------------------------------------------


def decode_clip(path: str | os.PathLike, *, fps: float, size: int, num_frames: int) -> np.ndarray:
    """The first `num_frames` frames of a video at `fps`, as uint8 (num_frames, size, size, 3).

    Output frame `j` is the source frame on screen at time `j / fps` after the
    first frame. Frames are resized (short side to `size`) and centre-cropped.
    Raises `ClipError` (never an av/OS error) for files that cannot give a clip.
    """
    if fps <= 0 or size <= 0 or num_frames <= 0:
        raise ValueError(f"fps, size and num_frames must be positive, got {fps}, {size}, {num_frames}")
    import av

    path = Path(path)
    if not path.is_file():
        raise ClipError("missing_file", str(path))
    if path.stat().st_size == 0:
        raise ClipError("empty_file", str(path))
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise ClipError("unreadable", f"{path}: {e}") from None
    with container:
        if not container.streams.video:
            raise ClipError("unreadable", f"{path}: no video stream")
        stream = container.streams.video[0]
        step = Fraction(1) / Fraction(str(fps))
        last_target = (num_frames - 1) * step
        declared = _declared_duration(stream, container)
        if declared is not None and declared <= last_target:
            raise ClipError("too_short", f"{path}: lasts {float(declared):.3f}s, the clip's last frame is at "
                                         f"{float(last_target):.3f}s")
        clip: list[np.ndarray] = []
        prev, prev_time, start = None, None, None
        try:
            for n, frame in enumerate(container.decode(stream)):
                time = _frame_time(frame, stream, n)
                if start is None:
                    start = time
                time -= start
                while len(clip) < num_frames and len(clip) * step < time:
                    clip.append(_resize_crop(prev, size))  # `prev` is on screen at that instant
                if len(clip) == num_frames:
                    break
                prev, prev_time = frame, time
            else:  # end of stream: the last frame stays on screen for its duration
                if prev is not None:
                    end = prev_time + _frame_duration(prev, stream)
                    while len(clip) < num_frames and len(clip) * step < end:
                        clip.append(_resize_crop(prev, size))
        except (av.FFmpegError, OSError, ValueError) as e:
            raise ClipError("truncated", f"{path}: decoding failed after {len(clip)} clip frames: {e}") from None
    if len(clip) < num_frames:
        if declared is not None:
            raise ClipError("truncated", f"{path}: stream ended after {len(clip)}/{num_frames} clip frames "
                                         f"but the header says {float(declared):.3f}s")
        raise ClipError("too_short", f"{path}: only {len(clip)}/{num_frames} clip frames")
    return np.stack(clip)


def _declared_duration(stream, container) -> Fraction | None:
    if stream.duration and stream.time_base:
        return stream.duration * stream.time_base
    if container.duration:
        return Fraction(container.duration, 1_000_000)  # AV_TIME_BASE
    return None


def _frame_time(frame, stream, n: int) -> Fraction:
    if frame.pts is not None and frame.time_base:
        return frame.pts * frame.time_base
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise ClipError("unreadable", "frames have no timestamps and the stream no frame rate")
    return Fraction(n) / Fraction(rate)


def _frame_duration(frame, stream) -> Fraction:
    if frame.duration and frame.time_base:
        return frame.duration * frame.time_base
    rate = stream.average_rate or stream.guessed_rate
    return Fraction(1) / Fraction(rate) if rate else Fraction(0)


def _resize_crop(frame, size: int) -> np.ndarray:
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = frame.reformat(width=nw, height=nh, format="rgb24", interpolation="AREA").to_ndarray()
    top, left = (nh - size) // 2, (nw - size) // 2
    return rgb[top:top + size, left:left + size]


# --------------------------------------------------------------------------
# CSV rows -> clips, with skip counting (no TensorFlow).
# --------------------------------------------------------------------------


def read_rows(csv_path: str | os.PathLike) -> Iterator[tuple[int, dict[str, str] | None]]:
    """(row number, row) for each data row of a results CSV (blank lines skipped); row is None when malformed."""
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != list(CSV_FIELDS):
            raise ValueError(f"{csv_path}: expected the WebVid header {','.join(CSV_FIELDS)}, got {header}")
        r = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error:  # e.g. a field over csv.field_size_limit(); the reader goes on with the next line
                fields = None
            if fields == []:  # blank line
                continue
            yield r, None if fields is None else _parse_row(fields)
            r += 1


def _parse_row(fields: list[str]) -> dict[str, str] | None:
    if len(fields) != len(CSV_FIELDS):
        return None
    row = dict(zip(CSV_FIELDS, (x.strip() for x in fields)))
    page = Path(row["page_dir"])
    if (not _VIDEOID.match(row["videoid"]) or not row["name"] or not row["page_dir"]
            or page.is_absolute() or ".." in page.parts):
        return None
    return row


def find_video(manual_dir: str | os.PathLike, row: dict[str, str]) -> Path | None:
    """`{page_dir}/{videoid}.mp4`, else `videos/{videoid}.mp4`, else None."""
    for rel in (Path(row["page_dir"]) / f"{row['videoid']}.mp4", Path("videos") / f"{row['videoid']}.mp4"):
        path = Path(manual_dir) / rel
        if path.is_file():
            return path
    return None


def shard_of(row_number: int, row: dict[str, str] | None, num_shards: int) -> int:
    """The shard of a CSV row: crc32(videoid) % num_shards, so that duplicates meet; malformed rows by number."""
    if row is None:
        return row_number % num_shards
    return zlib.crc32(row["videoid"].encode()) % num_shards


def generate_clips(manual_dir: str | os.PathLike, csv_path: str | os.PathLike, *, fps: float, size: int,
                   num_frames: int, counts: collections.Counter, shard_index: int = 0,
                   num_shards: int = 1) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields (videoid, {'video', 'caption', 'videoid'}) for the kept rows of this shard.

    `counts` is updated in place: 'rows' (rows of this shard), 'kept', and one
    key per skip reason that occurred.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in 0..{num_shards - 1}, got {shard_index}")
    seen: set[str] = set()
    for r, row in read_rows(csv_path):
        if shard_of(r, row, num_shards) != shard_index:
            continue
        counts["rows"] += 1
        try:
            if row is None:
                raise ClipError("bad_csv_row", f"{csv_path}: data row {r}")
            if row["videoid"] in seen:
                raise ClipError("duplicate_videoid", f"{csv_path}: data row {r}: {row['videoid']}")
            seen.add(row["videoid"])
            path = find_video(manual_dir, row)
            if path is None:
                raise ClipError("missing_file", f"{row['page_dir']}/{row['videoid']}.mp4 (or videos/)")
            video = decode_clip(path, fps=fps, size=size, num_frames=num_frames)
        except ClipError as e:
            counts[e.reason] += 1
            log.info("webvid: skipped %s", e)
            continue
        counts["kept"] += 1
        yield row["videoid"], {"video": video, "caption": row["name"], "videoid": row["videoid"]}


def summarize(counts: collections.Counter) -> dict[str, Any]:
    """The JSON-able report of one split: rows, kept, and skipped per reason (all reasons listed)."""
    return {"rows": counts["rows"], "kept": counts["kept"],
            "skipped": {reason: counts[reason] for reason in SKIP_REASONS}}


def split_csvs(manual_dir: str | os.PathLike, patterns: dict[str, str]) -> dict[str, Path]:
    """The CSV of each split present in `manual_dir`; raises if a pattern is ambiguous or none match."""
    found = {}
    for split, pattern in patterns.items():
        matches = sorted(Path(manual_dir).glob(pattern))
        if len(matches) > 1:
            raise ValueError(f"split {split!r}: {len(matches)} files in {manual_dir} match {pattern!r}: "
                             f"{[m.name for m in matches]}; pass the file name explicitly")
        if matches:
            found[split] = matches[0]
    if not found:
        raise FileNotFoundError(f"no results CSV in {manual_dir} matches any of {patterns}")
    return found


# --------------------------------------------------------------------------
# TFDS builder `webvid` (tensorflow_datasets imported on first use).
# --------------------------------------------------------------------------


@functools.cache
def builder_class():
    """Defines (once) and returns the TFDS builder class `Webvid`; imports tensorflow_datasets.

    Defining the class registers `webvid` with TFDS.
    """
    import dataclasses

    import tensorflow_datasets as tfds
    from etils import epath

    @dataclasses.dataclass
    class WebvidConfig(tfds.core.BuilderConfig):
        """Clip geometry, storage and shard of one `webvid` variant."""
        size: int = 256
        fps: float = 8.0
        num_frames: int = 16
        encoding: str = "jpeg"  # or "png" (lossless, ~5x larger)
        jpeg_quality: int = 90
        split_csvs: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_SPLIT_CSVS))
        shard_index: int = 0
        num_shards: int = 1

    class Webvid(tfds.core.GeneratorBasedBuilder):
        """WebVid clips with captions, decoded from a local download with PyAV."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "First release."}
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            "Put the WebVid results CSVs (videoid,contentUrl,duration,page_dir,name) and the mp4 files "
            "(<page_dir>/<videoid>.mp4 or videos/<videoid>.mp4) in manual_dir.")
        BUILDER_CONFIGS = [
            WebvidConfig(name="256", description="256x256, 8 fps, 16 frames, JPEG frames."),
            WebvidConfig(name="tiny", description="32x32, 8 fps, 8 frames, PNG frames; for tests.",
                         size=32, num_frames=8, encoding="png"),
        ]
        DEFAULT_CONFIG_NAME = "256"
        # TFDS 4.9.10 infers this via `importlib_resources`, which new `etils`
        # no longer installs; naming the file directly sidesteps that import.
        code_path = epath.Path(__file__)

        def __init__(self, *, file_format=None, **kwargs):
            # array_record gives the random access the input pipeline resumes by.
            super().__init__(file_format=file_format or "array_record", **kwargs)

        def _info(self):
            cfg = self.builder_config
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({
                    "video": tfds.features.Video(shape=(cfg.num_frames, cfg.size, cfg.size, 3),
                                                 encoding_format=cfg.encoding),
                    "caption": tfds.features.Text(),
                    "videoid": tfds.features.Text(),
                }),
                homepage="https://m-bain.github.io/webvid-dataset/",
                metadata=tfds.core.MetadataDict(),
            )

        def _split_generators(self, dl_manager):
            cfg = self.builder_config
            csvs = split_csvs(dl_manager.manual_dir, cfg.split_csvs)
            return {split: self._generate_examples(dl_manager.manual_dir, split, path)
                    for split, path in csvs.items()}

        def _generate_examples(self, manual_dir, split, csv_path):
            cfg = self.builder_config
            counts = collections.Counter()
            for key, ex in generate_clips(manual_dir, csv_path, fps=cfg.fps, size=cfg.size,
                                          num_frames=cfg.num_frames, counts=counts,
                                          shard_index=cfg.shard_index, num_shards=cfg.num_shards):
                ex["video"] = [_encode_frame(f, cfg.encoding, cfg.jpeg_quality) for f in ex["video"]]
                yield key, ex
            report = summarize(counts)
            self.info.metadata.setdefault("report", {})[split] = report
            log.warning("webvid %s %s (shard %d/%d): %s", cfg.name, split, cfg.shard_index, cfg.num_shards,
                        json.dumps(report))
            if not report["kept"]:  # TFDS cannot write an empty split; say why here rather than in TFDS
                hint = "; use fewer shards" if cfg.num_shards > 1 else ""
                raise RuntimeError(f"webvid {split}: no usable video among the {report['rows']} rows of this "
                                   f"build{hint}: {report}")

    return Webvid


def builder(config: str = "256", *, data_dir: str | None = None, shard_index: int = 0, num_shards: int = 1,
            **overrides):
    """A `webvid` builder instance; imports tensorflow_datasets.

    `overrides` replace fields of the named config (size, fps, num_frames,
    encoding, jpeg_quality, split_csvs); the name then records them. With
    `num_shards > 1` the builder makes shard `shard_index` only, as the dataset
    `webvid/{config}_shard{i:05d}of{n:05d}` (see `merge_shards`). Build with
    `b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=...))`.
    """
    import dataclasses

    cfg = _config(config, overrides)
    if num_shards > 1:
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index must be in 0..{num_shards - 1}, got {shard_index}")
        cfg = dataclasses.replace(cfg, name=_shard_name(cfg.name, shard_index, num_shards),
                                  shard_index=shard_index, num_shards=num_shards)
    return builder_class()(config=cfg, data_dir=data_dir)


def _config(config: str, overrides: dict):
    import dataclasses

    cls = builder_class()
    base = {c.name: c for c in cls.BUILDER_CONFIGS}
    if config not in base:
        raise ValueError(f"unknown webvid config {config!r}; expected one of {sorted(base)}")
    cfg = base[config]
    fields = {f.name for f in dataclasses.fields(cfg)} - {"name", "shard_index", "num_shards"}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown webvid config fields {sorted(unknown)}; allowed: {sorted(fields)}")
    if overrides:
        name = config + "".join(f"_{k}{v}" for k, v in sorted(overrides.items()) if k != "split_csvs")
        if "split_csvs" in overrides:
            name += "_csv" + "".join(sorted(f"{s}-{Path(p).stem}" for s, p in overrides["split_csvs"].items()))
        cfg = dataclasses.replace(cfg, name=re.sub(r"[^A-Za-z0-9_.-]", "-", name), **overrides)
    return cfg


def _shard_name(name: str, shard_index: int, num_shards: int) -> str:
    return f"{name}_shard{shard_index:05d}of{num_shards:05d}"


def _encode_frame(frame: np.ndarray, encoding: str, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if encoding == "jpeg":
        Image.fromarray(frame, "RGB").save(buf, format="jpeg", quality=quality)
    elif encoding == "png":
        Image.fromarray(frame, "RGB").save(buf, format="png")
    else:
        raise ValueError(f"encoding must be 'jpeg' or 'png', got {encoding!r}")
    return buf.getvalue()


def merge_shards(data_dir: str, config: str = "256", *, num_shards: int, **overrides) -> dict[str, Any]:
    """Moves the record files of the `num_shards` shard builds into the single dataset `webvid/{config}`.

    The shard datasets must all be complete; they are deleted once merged. Returns the merged report (skip
    counts summed over shards), which is also stored in `metadata.json`.
    """
    if num_shards < 2:
        raise ValueError(f"merge_shards needs num_shards >= 2, got {num_shards}")
    final = builder(config, data_dir=data_dir, **overrides)
    final_dir = Path(final.data_dir)
    if (final_dir / "dataset_info.json").exists():
        raise FileExistsError(f"{final_dir} already holds a dataset")
    shard_dirs = [Path(builder(config, data_dir=data_dir, shard_index=i, num_shards=num_shards, **overrides).data_dir)
                  for i in range(num_shards)]
    missing = [str(d) for d in shard_dirs if not (d / "dataset_info.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard builds are missing or incomplete: {missing[:5]}")
    infos = [json.loads((d / "dataset_info.json").read_text()) for d in shard_dirs]
    reports = [json.loads((d / "metadata.json").read_text())["report"] for d in shard_dirs]
    splits = [s["name"] for s in infos[0]["splits"]]
    if any([s["name"] for s in info["splits"]] != splits for info in infos):
        raise ValueError("shard builds have different splits; were they built from the same manual_dir?")

    final_dir.mkdir(parents=True)
    merged_splits, merged_report = [], {}
    for split in splits:
        files, lengths, num_bytes = [], [], 0
        for d, info in zip(shard_dirs, infos):
            (s,) = [s for s in info["splits"] if s["name"] == split]
            n = len(s["shardLengths"])
            files += [d / f"webvid-{split}.{info['fileFormat']}-{j:05d}-of-{n:05d}" for j in range(n)]
            lengths += [int(x) for x in s["shardLengths"]]
            num_bytes += int(s.get("numBytes", 0))
        for j, src in enumerate(files):
            os.replace(src, final_dir / f"webvid-{split}.{infos[0]['fileFormat']}-{j:05d}-of-{len(files):05d}")
        merged_splits.append({"name": split, "numBytes": str(num_bytes), "shardLengths": [str(x) for x in lengths],
                              "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"})
        counts = collections.Counter()
        for report in reports:
            counts.update({"rows": report[split]["rows"], "kept": report[split]["kept"], **report[split]["skipped"]})
        merged_report[split] = summarize(counts)

    info = dict(infos[0], configName=final.builder_config.name,
                configDescription=final.builder_config.description, splits=merged_splits)
    (final_dir / "dataset_info.json").write_text(json.dumps(info, indent=2))
    for name in ("features.json",):
        (final_dir / name).write_bytes((shard_dirs[0] / name).read_bytes())
    (final_dir / "metadata.json").write_text(json.dumps({"report": merged_report}))
    for d in shard_dirs:  # their record files are gone; what is left would read as a broken data set
        shutil.rmtree(d)
        if not any(d.parent.iterdir()):
            d.parent.rmdir()
    log.warning("webvid %s: merged %d shards into %s: %s", config, num_shards, final_dir, json.dumps(merged_report))
    return merged_report


def main(argv=None) -> None:
    """`python -m artv_jax.data.webvid {build,merge} ...` (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "merge"])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--manual_dir", help="the WebVid download (build only)")
    parser.add_argument("--config", default="256")
    parser.add_argument("--num_shards", type=int, default=1)
    parser.add_argument("--shard_index", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from artv_jax.data import webvid  # not `__main__`: TFDS names the builder after its module

    if args.command == "merge":
        webvid.merge_shards(args.data_dir, args.config, num_shards=args.num_shards)
        return
    if not args.manual_dir:
        parser.error("build needs --manual_dir")
    import tensorflow_datasets as tfds

    b = webvid.builder(args.config, data_dir=args.data_dir, shard_index=args.shard_index,
                       num_shards=args.num_shards)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
    print(json.dumps(b.info.metadata.get("report", {}), indent=2))


if __name__ == "__main__":
    main()
