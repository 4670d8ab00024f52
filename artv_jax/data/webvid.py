"""WebVid from a download: PyAV clip decoding and the TFDS builder `webvid`, built with Apache Beam.

Nothing is downloaded. Put the results CSV (`videoid,contentUrl,duration,
page_dir,name`) and the mp4 files in one directory, the TFDS `manual_dir`
(local, or a URL such as gs://bucket/webvid):

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

The builder's splits are Apache Beam pipelines (`build_split`): one reader
parses the CSV, a GroupByKey on `videoid` keeps the first row of each id, and
the workers decode. It runs on Beam's local Python runner (`LOCAL_BEAM_FLAGS`:
one worker process per core; it holds a split in memory, so tests and subsets)
or on any Beam runner given as flags, such as Dataflow (docs/data.md):

    python -m artv_jax.data.webvid build --manual_dir=M --data_dir=D --config=256 [--beam_flag=...]

A bad row or file never stops a build: it is skipped and counted under one
of `SKIP_REASONS` with Beam metrics counters. Once the pipeline has run, the
counts of each split are logged and stored in the dataset's `metadata.json`
(`builder.info.metadata["report"]`). `generate_clips` applies the same rules
in one Python loop: the reference the Beam build is tested against.

`decode_clip` and the CSV/row logic need only PyAV and NumPy (and etils for
URLs); tensorflow_datasets is imported inside `builder_class()` and `builder()`,
apache_beam inside `build_split()` and the builder's methods.
"""

from __future__ import annotations

import argparse
import collections
import csv
import functools
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

CSV_FIELDS = ("videoid", "contentUrl", "duration", "page_dir", "name")
SKIP_REASONS = (
    "bad_csv_row",        # unparsable line, wrong number of fields, empty/odd videoid, page_dir or name
    "duplicate_videoid",  # a videoid on an earlier row of the same CSV (the first row is kept)
    "missing_file",       # no mp4 in either layout
    "empty_file",         # zero bytes
    "unreadable",         # PyAV cannot open it (not a video, or truncated before its index) or no video stream
    "truncated",          # opens, but decoding fails or ends before the clip although the header says it is long enough
    "too_short",          # shorter than the clip (num_frames at fps)
)
DEFAULT_SPLIT_CSVS = {"train": "*train*.csv", "validation": "*val*.csv"}
METRICS_NAMESPACE = "webvid"  # Beam counters `{split}/{rows|kept|reason}`
# Beam's local Python runner (FnApiRunner), one worker process per core: the build's default. (Beam's
# `DirectRunner` first tries Prism, a Go runner it downloads from GitHub, and only then falls back to it.)
LOCAL_BEAM_FLAGS = ("--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=0")
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
# Paths: local, or URLs (gs://...) through etils.epath.
# --------------------------------------------------------------------------


def _is_url(path) -> bool:
    return "://" in os.fspath(path)


def _path(path):
    """A pathlib.Path, or for a URL (gs://...) an etils epath.Path (read through tf.io.gfile or fsspec)."""
    if _is_url(path):
        from etils import epath

        return epath.Path(os.fspath(path))
    return Path(path)


class _RawReader(io.RawIOBase):
    """A raw binary stream over a file object that only has `read(n)` (tf.io.gfile.GFile has no `readable`)."""

    def __init__(self, f):
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._f.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


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

    remote = _is_url(path)
    path = _path(path)
    if not path.is_file():
        raise ClipError("missing_file", str(path))
    if remote:  # gs://...: read through etils.epath, decode from memory
        data = path.read_bytes()
        if not data:
            raise ClipError("empty_file", str(path))
        source = io.BytesIO(data)
    else:  # FFmpeg reads local files itself
        if path.stat().st_size == 0:
            raise ClipError("empty_file", str(path))
        source = str(path)
    try:
        container = av.open(source)
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
    """(row number, row) for each data row of a results CSV (blank lines skipped); row is None when malformed.

    `csv_path` may be a URL (gs://...).
    """
    with _path(csv_path).open("rb") as raw:
        f = io.TextIOWrapper(io.BufferedReader(_RawReader(raw), 1 << 20), encoding="utf-8", errors="replace",
                             newline="")
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


def find_video(manual_dir: str | os.PathLike, row: dict[str, str]):
    """`{page_dir}/{videoid}.mp4`, else `videos/{videoid}.mp4`, else None (a Path, or an epath.Path for a URL)."""
    for rel in (f"{row['page_dir']}/{row['videoid']}.mp4", f"videos/{row['videoid']}.mp4"):
        path = _path(manual_dir) / rel
        if path.is_file():
            return path
    return None


def clip_of_row(manual_dir: str | os.PathLike, row: dict[str, str], *, fps: float, size: int,
                num_frames: int) -> np.ndarray:
    """The clip of a well-formed row; raises ClipError (missing_file, or a reason from `decode_clip`)."""
    path = find_video(manual_dir, row)
    if path is None:
        raise ClipError("missing_file", f"{row['page_dir']}/{row['videoid']}.mp4 (or videos/)")
    return decode_clip(path, fps=fps, size=size, num_frames=num_frames)


def generate_clips(manual_dir: str | os.PathLike, csv_path: str | os.PathLike, *, fps: float, size: int,
                   num_frames: int, counts: collections.Counter) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields (videoid, {'video', 'caption', 'videoid'}) for the kept rows, in one Python loop.

    The rules of the Beam build (`build_split`), sequentially: the reference it is
    tested against. `counts` is updated in place: 'rows', 'kept', and one key
    per skip reason that occurred.
    """
    seen: set[str] = set()
    for r, row in read_rows(csv_path):
        counts["rows"] += 1
        try:
            if row is None:
                raise ClipError("bad_csv_row", f"{csv_path}: data row {r}")
            if row["videoid"] in seen:
                raise ClipError("duplicate_videoid", f"{csv_path}: data row {r}: {row['videoid']}")
            seen.add(row["videoid"])
            video = clip_of_row(manual_dir, row, fps=fps, size=size, num_frames=num_frames)
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


def split_csvs(manual_dir: str | os.PathLike, patterns: dict[str, str]) -> dict[str, Any]:
    """The CSV of each split present in `manual_dir`; raises if a pattern is ambiguous or none match."""
    found = {}
    for split, pattern in patterns.items():
        matches = sorted(_path(manual_dir).glob(pattern))
        if len(matches) > 1:
            raise ValueError(f"split {split!r}: {len(matches)} files in {manual_dir} match {pattern!r}: "
                             f"{[m.name for m in matches]}; pass the file name explicitly")
        if matches:
            found[split] = matches[0]
    if not found:
        raise FileNotFoundError(f"no results CSV in {manual_dir} matches any of {patterns}")
    return found


# --------------------------------------------------------------------------
# The Beam pipeline of one split (apache_beam imported on first use).
# --------------------------------------------------------------------------


def build_split(split: str, manual_dir: str | os.PathLike, csv_path: str | os.PathLike, *, fps: float, size: int,
                num_frames: int, encoding: str, jpeg_quality: int):
    """The Beam PTransform, applied to a pipeline, that gives (videoid, example) for each kept row of a CSV.

    One worker reads the CSV (a row's number needs one reader; parsing is cheap next to decoding), a
    GroupByKey on `videoid` keeps the first row of each id, as `generate_clips` does, and the decoding
    spreads over the workers. Each row is counted in the Beam counters `webvid:{split}/rows`, and then
    `.../kept` or `.../{reason}` (read back by `reports_from_metrics`).
    """
    import apache_beam as beam

    clip = {"fps": fps, "size": size, "num_frames": num_frames}
    return ("CsvPath" >> beam.Create([os.fspath(csv_path)])
            | "Rows" >> beam.FlatMap(_keyed_rows, split)
            | "ByVideoid" >> beam.GroupByKey()
            | "FirstRow" >> beam.Map(_first_row, split)
            | "Decode" >> beam.FlatMap(_clip_example, split, os.fspath(manual_dir), clip, encoding, jpeg_quality))


def _count(split: str, key: str, n: int = 1) -> None:
    from apache_beam.metrics import Metrics

    Metrics.counter(METRICS_NAMESPACE, f"{split}/{key}").inc(n)


def _keyed_rows(csv_path: str, split: str) -> Iterator[tuple[str, tuple[int, dict[str, str]]]]:
    """(videoid, (row number, row)) for each well-formed row of the CSV; counts all rows and the malformed ones."""
    rows = bad = 0
    for r, row in read_rows(csv_path):
        rows += 1
        if row is None:
            bad += 1
            log.info("webvid: skipped bad_csv_row: %s: data row %d", csv_path, r)
            continue
        # Only what the clip needs goes through the shuffle (10M rows: contentUrl and duration are ~half of it).
        yield row["videoid"], (r, {k: row[k] for k in ("videoid", "page_dir", "name")})
    _count(split, "rows", rows)  # once per CSV: a counter update per row costs as much as parsing it
    _count(split, "bad_csv_row", bad)


def _first_row(keyed: tuple[str, Any], split: str) -> tuple[int, dict[str, str]]:
    """The (row number, row) of a videoid's first row; the others are counted as duplicates."""
    videoid, rows = keyed
    rows = sorted(rows, key=lambda numbered: numbered[0])
    if len(rows) > 1:
        _count(split, "duplicate_videoid", len(rows) - 1)
        log.info("webvid: skipped duplicate_videoid: %s on data rows %s", videoid, [r for r, _ in rows[1:]])
    return rows[0]


def _clip_example(numbered_row: tuple[int, dict[str, str]], split: str, manual_dir: str, clip: dict,
                  encoding: str, jpeg_quality: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(videoid, example with encoded frames) of a row, or nothing when its video gives no clip (counted)."""
    _, row = numbered_row
    try:
        video = clip_of_row(manual_dir, row, **clip)
    except ClipError as e:
        _count(split, e.reason)
        log.info("webvid: skipped %s", e)
        return
    _count(split, "kept")
    yield row["videoid"], {"video": [_encode_frame(frame, encoding, jpeg_quality) for frame in video],
                           "caption": row["name"], "videoid": row["videoid"]}


def reports_from_metrics(pipeline_result, splits) -> dict[str, dict[str, Any]]:
    """The report (`summarize`) of each split from the counters of a finished Beam pipeline."""
    from apache_beam.metrics.metric import MetricsFilter

    counts = {split: collections.Counter() for split in splits}
    for result in pipeline_result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        split, _, key = result.key.metric.name.partition("/")
        # Committed values count a retried bundle once; a runner without them has only the attempted ones.
        value = result.committed if result.committed is not None else result.attempted
        counts[split][key] += value  # a counter has one result per step that touched it: they add up
    return {split: summarize(c) for split, c in counts.items()}


def beam_options(flags):
    """Beam `PipelineOptions` from command-line flags (`--runner=DataflowRunner`, ...); unknown flags raise."""
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(list(flags))
    unknown = set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    if unknown:  # Beam itself would only log them
        raise ValueError(f"unknown Beam pipeline options {sorted(unknown)} in {list(flags)}")
    return options


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


# --------------------------------------------------------------------------
# TFDS builder `webvid` (tensorflow_datasets imported on first use).
# --------------------------------------------------------------------------

CONFIGS = {  # name -> (description, fields that differ from WebvidConfig's defaults)
    "256": ("256x256, 8 fps, 16 frames, JPEG frames.", {}),
    "tiny": ("32x32, 8 fps, 8 frames, PNG frames; for tests.", {"size": 32, "num_frames": 8, "encoding": "png"}),
}


@functools.cache
def builder_class():
    """Defines (once) and returns the TFDS builder class `Webvid`; imports tensorflow_datasets.

    Defining the class registers `webvid` with TFDS.
    """
    import dataclasses

    import tensorflow_datasets as tfds
    from etils import epath
    from tensorflow_datasets.core import file_adapters
    from tensorflow_datasets.core import writer as writer_lib

    @dataclasses.dataclass
    class WebvidConfig(tfds.core.BuilderConfig):
        """Clip geometry and storage of one `webvid` variant."""
        size: int = 256
        fps: float = 8.0
        num_frames: int = 16
        encoding: str = "jpeg"  # or "png" (lossless, ~5x larger)
        jpeg_quality: int = 90
        split_csvs: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_SPLIT_CSVS))

    class StagedExampleWriter(writer_lib.ExampleWriter):
        """Writes an array_record shard bound for a URL (gs://) to a local file first, then copies it there.

        ArrayRecord's writer opens local files only (tensorflow/datasets#10981), so a Dataflow worker
        could not write the shards of a gs:// `data_dir` otherwise. Other paths and formats: TFDS's writer.
        """

        def write(self, path, examples):
            if not _is_url(path) or self.file_format != file_adapters.FileFormat.ARRAY_RECORD:
                return super().write(path, examples)
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, "shard")
                positions = super().write(local, examples)
                with open(local, "rb") as src, epath.Path(os.fspath(path)).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 24)
            return positions

    class Webvid(tfds.core.GeneratorBasedBuilder):
        """WebVid clips with captions, decoded from a WebVid download with PyAV, built with Apache Beam."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "First release."}
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            "Put the WebVid results CSVs (videoid,contentUrl,duration,page_dir,name) and the mp4 files "
            "(<page_dir>/<videoid>.mp4 or videos/<videoid>.mp4) in manual_dir.")
        BUILDER_CONFIGS = [WebvidConfig(name=name, description=description, **fields)
                           for name, (description, fields) in CONFIGS.items()]
        DEFAULT_CONFIG_NAME = "256"
        # TFDS 4.9.10 infers this via `importlib_resources`, which new `etils`
        # no longer installs; naming the file directly sidesteps that import.
        code_path = epath.Path(__file__)

        def __init__(self, *, file_format=None, **kwargs):
            # array_record gives the random access the input pipeline resumes by.
            super().__init__(file_format=file_format or "array_record", **kwargs)

        def download_and_prepare(self, *, download_config=None, **kwargs):
            """TFDS's, on the `LOCAL_BEAM_FLAGS` runner when `download_config` names no Beam runner or options.

            (Without them TFDS would warn and leave the choice to Beam's `DirectRunner`, see LOCAL_BEAM_FLAGS.)
            """
            config = download_config or tfds.download.DownloadConfig()
            if config.beam_runner is None and config.beam_options is None:
                config = dataclasses.replace(config, beam_options=beam_options(LOCAL_BEAM_FLAGS))
            return super().download_and_prepare(download_config=config, **kwargs)

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
            csvs = split_csvs(dl_manager.manual_dir, self.builder_config.split_csvs)
            self._splits = list(csvs)
            return {split: self._generate_examples(dl_manager.manual_dir, split, path)
                    for split, path in csvs.items()}

        def _generate_examples(self, manual_dir, split, csv_path):
            cfg = self.builder_config
            return build_split(split, manual_dir, csv_path, fps=cfg.fps, size=cfg.size, num_frames=cfg.num_frames,
                               encoding=cfg.encoding, jpeg_quality=cfg.jpeg_quality)

        def _process_pipeline_result(self, pipeline_result):
            # TFDS calls this once the pipeline has run, before it writes the data set's info.
            reports = reports_from_metrics(pipeline_result, self._splits)
            for split, report in reports.items():
                log.warning("webvid %s %s: %s", self.builder_config.name, split, json.dumps(report))
            self.info.metadata["report"] = reports

        def _example_writer(self):
            return StagedExampleWriter(file_format=self.info.file_format)

    return Webvid


def builder(config: str = "256", *, data_dir: str | None = None, file_format: str | None = None, **overrides):
    """A `webvid` builder instance; imports tensorflow_datasets.

    `overrides` replace fields of the named config (size, fps, num_frames,
    encoding, jpeg_quality, split_csvs); the name then records them.
    `file_format`: "array_record" (default) or "tfrecord". Build with
    `b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=..., beam_options=...))`;
    without Beam options it runs on `LOCAL_BEAM_FLAGS`.
    """
    return builder_class()(config=_config(config, overrides), data_dir=data_dir, file_format=file_format)


def _config(config: str, overrides: dict):
    import dataclasses

    cls = builder_class()
    base = {c.name: c for c in cls.BUILDER_CONFIGS}
    if config not in base:
        raise ValueError(f"unknown webvid config {config!r}; expected one of {sorted(base)}")
    cfg = base[config]
    fields = {f.name for f in dataclasses.fields(cfg)} - {"name"}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown webvid config fields {sorted(unknown)}; allowed: {sorted(fields)}")
    if overrides:
        name = config + "".join(f"_{k}{v}" for k, v in sorted(overrides.items()) if k != "split_csvs")
        if "split_csvs" in overrides:
            name += "_csv" + "".join(sorted(f"{s}-{Path(p).stem}" for s, p in overrides["split_csvs"].items()))
        cfg = dataclasses.replace(cfg, name=re.sub(r"[^A-Za-z0-9_.-]", "-", name), **overrides)
    return cfg


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------

PROGRAM = "artv_jax.data.webvid"


def main(argv=None) -> None:
    """`python -m artv_jax.data.webvid build ...` (see the module docstring and docs/data.md)."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description=__doc__.splitlines()[0], allow_abbrev=False,
        epilog=f"Any other --flag is a Beam pipeline option (default: {' '.join(LOCAL_BEAM_FLAGS)}; "
               "any --runner replaces them all).")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--manual_dir", required=True, help="the WebVid download: CSVs and mp4s (local or gs://)")
    parser.add_argument("--data_dir", required=True, help="the TFDS data dir to write webvid/<config>/ in")
    parser.add_argument("--config", default="256", choices=sorted(CONFIGS))
    parser.add_argument("--file_format", default="array_record", choices=["array_record", "tfrecord"])
    args, flags = parser.parse_known_args(argv)
    stray = [f for f in flags if not f.startswith("--")]
    if stray:
        parser.error(f"unexpected arguments {stray}")
    if not any(f.startswith("--runner") for f in flags):
        flags = [*LOCAL_BEAM_FLAGS, *flags]
    logging.basicConfig(level=logging.WARNING)
    from artv_jax import runs
    from artv_jax.data import webvid  # not `__main__`: TFDS names the builder after its module

    with runs.usage_errors(PROGRAM):  # bad input: one line, before the build starts
        if not webvid._path(args.manual_dir).is_dir():
            raise FileNotFoundError(f"--manual_dir {args.manual_dir} is not a directory (the WebVid CSVs and mp4s)")
        webvid.split_csvs(args.manual_dir, DEFAULT_SPLIT_CSVS)
        if importlib.util.find_spec("apache_beam") is None:
            raise runs.UsageError("building webvid needs Apache Beam: pip install -e '.[beam]'")
        options = webvid.beam_options(flags)
    import tensorflow_datasets as tfds

    b = webvid.builder(args.config, data_dir=args.data_dir, file_format=args.file_format)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir,
                                                                        beam_options=options))
    print(json.dumps(b.info.metadata.get("report", {}), indent=2))


if __name__ == "__main__":
    main()
