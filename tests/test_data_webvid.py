"""WebVid: PyAV clip decoding, skip counting, and the `webvid` TFDS builder (Beam) on mp4s written in the test."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO

from artv_jax.data import webvid

FPS, SIZE, FRAMES = 8, 32, 8  # the `tiny` config, 8 frames: last clip frame at 0.875 s


def write_mp4(path: Path, frames: np.ndarray, fps: int, faststart: bool = False) -> Path:
    """Writes uint8 (T, H, W, 3) frames as an H.264 mp4 with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "10"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def counter_video(num: int, h: int, w: int) -> np.ndarray:
    """Frame k is flat (8k, 128, 64): its red level tells which source frame was used."""
    frames = np.empty((num, h, w, 3), np.uint8)
    frames[..., 0] = (8 * np.arange(num, dtype=np.int64) % 256)[:, None, None]
    frames[..., 1], frames[..., 2] = 128, 64
    return frames


def red_index(clip: np.ndarray) -> np.ndarray:
    """Source-frame index read back from the mean red level of each clip frame."""
    return np.round(clip[..., 0].reshape(len(clip), -1).mean(1) / 8).astype(int)


# videoid -> what the build must do with it
GOOD = {"10": ("pd1", 30, 40, 48, 64), "13": ("videos", 24, 30, 80, 48), "15": ("pd2", 10, 12, 96, 96)}
EXPECTED_REPORT = {
    "rows": 13, "kept": 3,
    "skipped": {"bad_csv_row": 3, "duplicate_videoid": 1, "missing_file": 1, "empty_file": 1,
                "unreadable": 2, "truncated": 1, "too_short": 1},
}


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory) -> Path:
    """A WebVid-like download: 3 good videos (3 sizes, 3 frame rates, both layouts) and one of each failure."""
    root = tmp_path_factory.mktemp("webvid_manual")
    for vid, (page, fps, num, h, w) in GOOD.items():
        write_mp4(root / page / f"{vid}.mp4", counter_video(num, h, w), fps)
    write_mp4(root / "pd1" / "20.mp4", counter_video(6, 48, 64), 30)  # 0.2 s: too short
    noise = np.random.default_rng(0).integers(0, 256, (60, 48, 64, 3), dtype=np.uint8)
    full = write_mp4(root / "pd1" / "21.mp4", noise, 30, faststart=True).read_bytes()
    (root / "pd1" / "21.mp4").write_bytes(full[: len(full) // 2])  # truncated, index intact
    full = write_mp4(root / "pd1" / "22.mp4", noise, 30).read_bytes()
    (root / "pd1" / "22.mp4").write_bytes(full[: len(full) // 2])  # truncated, index (at the end) lost
    (root / "pd1" / "23.mp4").write_bytes(b"")
    (root / "pd1" / "24.mp4").write_bytes(np.random.default_rng(1).bytes(5000))  # not a video
    rows = [
        "videoid,contentUrl,duration,page_dir,name",
        "10,https://x/10.mp4,PT00H00M01S,pd1,a dog runs on the beach",
        '13,https://x/13.mp4,PT00H00M01S,pd9,"portrait, with a comma in the caption"',
        "15,https://x/15.mp4,PT00H00M01S,pd2,slow ten fps square",
        "20,https://x/20.mp4,PT00H00M00S,pd1,too short",
        "21,https://x/21.mp4,PT00H00M02S,pd1,truncated",
        "22,https://x/22.mp4,PT00H00M02S,pd1,truncated without index",
        "23,https://x/23.mp4,PT00H00M02S,pd1,zero bytes",
        "24,https://x/24.mp4,PT00H00M02S,pd1,random bytes",
        "25,https://x/25.mp4,PT00H00M02S,pd1,no such file",
        "26,https://x/26.mp4,PT00H00M02S",  # broken row: fields missing
        "../27,https://x/27.mp4,PT00H00M02S,pd1,path in the videoid",  # broken row: bad videoid
        "28,https://x/28.mp4,PT00H00M02S,pd1," + "x" * 200_000,  # broken row: field over the csv size limit
        "10,https://x/10.mp4,PT00H00M01S,pd1,duplicate of the first row",
        "",  # blank line: not a row, not counted
    ]
    (root / "results_2M_train.csv").write_text("\n".join(rows) + "\n")
    return root


def test_decode_clip_resamples_to_fps(manual_dir):
    for vid, (page, fps, num, h, w) in GOOD.items():
        clip = webvid.decode_clip(manual_dir / page / f"{vid}.mp4", fps=FPS, size=SIZE, num_frames=FRAMES)
        assert clip.shape == (FRAMES, SIZE, SIZE, 3) and clip.dtype == np.uint8
        # Clip frame j shows the source frame on screen at j / 8 s.
        np.testing.assert_array_equal(red_index(clip), [j * fps // FPS for j in range(FRAMES)], err_msg=vid)


def test_decode_clip_resizes_short_side_and_centre_crops(tmp_path):
    frames = np.zeros((12, 48, 96, 3), np.uint8)
    frames[:, :, :48, 1] = 255  # left half green
    frames[:, :, 48:, 2] = 255  # right half blue
    clip = webvid.decode_clip(write_mp4(tmp_path / "wide.mp4", frames, 10), fps=FPS, size=SIZE, num_frames=4)
    # 96x48 -> 64x32, centre crop = columns 16..47: half green, half blue.
    assert clip.shape == (4, 32, 32, 3)
    assert (clip[:, :, :13, 1] > 230).all() and (clip[:, :, :13, 2] < 25).all()
    assert (clip[:, :, 19:, 2] > 230).all() and (clip[:, :, 19:, 1] < 25).all()


@pytest.mark.parametrize("vid,reason", [("20", "too_short"), ("21", "truncated"), ("22", "unreadable"),
                                        ("23", "empty_file"), ("24", "unreadable"), ("25", "missing_file")])
def test_decode_clip_reasons(manual_dir, vid, reason):
    with pytest.raises(webvid.ClipError) as e:
        webvid.decode_clip(manual_dir / "pd1" / f"{vid}.mp4", fps=FPS, size=SIZE, num_frames=FRAMES)
    assert e.value.reason == reason


def test_generate_clips_keeps_and_counts(manual_dir):
    counts = collections.Counter()
    kept = dict(webvid.generate_clips(manual_dir, manual_dir / "results_2M_train.csv", fps=FPS, size=SIZE,
                                      num_frames=FRAMES, counts=counts))
    assert sorted(kept) == sorted(GOOD)
    assert kept["13"]["caption"] == "portrait, with a comma in the caption"
    assert webvid.summarize(counts) == EXPECTED_REPORT


def test_bad_csv_header_raises(tmp_path):
    (tmp_path / "x_train.csv").write_text("id,url,name\n1,u,n\n")
    with pytest.raises(ValueError, match="expected the WebVid header"):
        list(webvid.read_rows(tmp_path / "x_train.csv"))


IN_PROCESS = ("--runner=FnApiRunner", "--direct_num_workers=1")  # Beam's local runner, in this process: fast


@pytest.fixture(scope="module")
def beam_build(manual_dir, tmp_path_factory):
    """`webvid/tiny` of the fixture built with Beam, in this process."""
    tfds = pytest.importorskip("tensorflow_datasets")
    data_dir = tmp_path_factory.mktemp("webvid_tfds")
    builder = webvid.builder("tiny", data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir), beam_options=webvid.beam_options(IN_PROCESS)))
    return builder


def test_beam_build_equals_the_sequential_build(manual_dir, beam_build):
    counts = collections.Counter()
    expected = dict(webvid.generate_clips(manual_dir, manual_dir / "results_2M_train.csv", fps=FPS, size=SIZE,
                                          num_frames=FRAMES, counts=counts))
    assert webvid.summarize(counts) == EXPECTED_REPORT and sorted(expected) == sorted(GOOD)
    assert list(beam_build.info.splits) == ["train"]
    ds = beam_build.as_data_source("train")
    got = {ex["videoid"].decode(): ex for ex in (ds[i] for i in range(len(ds)))}
    assert sorted(got) == sorted(expected)
    for vid, ex in expected.items():  # the same records: caption, videoid, frames (PNG: lossless)
        assert got[vid]["caption"].decode() == ex["caption"] and got[vid]["videoid"].decode() == ex["videoid"]
        np.testing.assert_array_equal(np.stack(got[vid]["video"]), ex["video"], err_msg=vid)
    assert got["10"]["caption"].decode() == "a dog runs on the beach"  # the first of the two rows of videoid 10
    # The skip counts, from Beam's counters: in the builder's metadata, on disk, and after reloading.
    assert beam_build.info.metadata["report"] == {"train": EXPECTED_REPORT}
    on_disk = json.loads((Path(beam_build.data_dir) / "metadata.json").read_text())
    assert on_disk == {"report": {"train": EXPECTED_REPORT}}
    reloaded = webvid.builder("tiny", data_dir=str(Path(beam_build.data_dir).parents[2]))  # D/webvid/tiny/1.0.0
    assert reloaded.info.metadata["report"] == {"train": EXPECTED_REPORT}


def test_training_pipeline_reads_the_beam_build(manual_dir, beam_build):
    from artv_jax.data import pipeline

    shard = pipeline.tfds_shard("webvid/tiny", "train", data_dir=str(Path(beam_build.data_dir).parents[2]),
                                process_index=0, process_count=1)
    with pipeline.TupleIterator(shard, global_batch=3, tokenize=lambda text: np.array([len(text)], np.int32),
                                num_ref_frames=1, stride_range=(1, 2), seed=0, num_epochs=1) as it:
        (batch,) = list(it)
    assert batch["target"].shape == (3, SIZE, SIZE, 3) and batch["refs"].shape == (3, 1, SIZE, SIZE, 3)
    assert sorted(batch["tokens"][:, 0]) == sorted(len(c) for c in (
        "a dog runs on the beach", "portrait, with a comma in the caption", "slow ten fps square"))


def gcs_on_disk(monkeypatch, root: Path):
    """Maps gs://bucket/... onto `root` for etils.epath (its mock, which TensorFlow's presence would bypass)."""
    from etils.epath import gpath
    from etils.epath import testing as epath_testing

    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    to_disk = lambda path: str(path).replace("gs://bucket", str(root))
    on_disk = lambda fn, path, *args, **kwargs: fn(to_disk(path), *args, **kwargs)
    from_disk = lambda fn, pattern: [p.replace(str(root), "gs://bucket") for p in fn(to_disk(pattern))]
    return epath_testing.mock_epath(open=on_disk, exists=on_disk, isdir=on_disk, stat=on_disk, glob=from_disk)


def test_reading_from_a_url_equals_reading_the_directory(manual_dir, monkeypatch):
    """gs://... paths are read through etils.epath: the same rows, clips and counts as from the directory."""
    from etils import epath

    with gcs_on_disk(monkeypatch, manual_dir):
        csvs = webvid.split_csvs("gs://bucket", webvid.DEFAULT_SPLIT_CSVS)
        assert isinstance(csvs["train"], epath.Path) and str(csvs["train"]) == "gs://bucket/results_2M_train.csv"
        counts = collections.Counter()
        remote = dict(webvid.generate_clips("gs://bucket", csvs["train"], fps=FPS, size=SIZE, num_frames=FRAMES,
                                            counts=counts))
    assert webvid.summarize(counts) == EXPECTED_REPORT
    local = dict(webvid.generate_clips(manual_dir, manual_dir / "results_2M_train.csv", fps=FPS, size=SIZE,
                                       num_frames=FRAMES, counts=collections.Counter()))
    assert sorted(remote) == sorted(local)
    for vid in remote:
        np.testing.assert_array_equal(remote[vid]["video"], local[vid]["video"])


def test_array_record_shards_for_a_url_are_written_locally_then_copied(tmp_path, monkeypatch):
    """ArrayRecord writes local files only; the builder's writer stages a gs:// shard and copies it there."""
    pytest.importorskip("tensorflow_datasets")
    from array_record.python import array_record_module

    writer = webvid.builder("tiny", data_dir=str(tmp_path / "tfds"))._example_writer()
    records = [(i, f"record {i}".encode()) for i in range(5)]
    with gcs_on_disk(monkeypatch, tmp_path):
        writer.write("gs://bucket/webvid-train.array_record-00000-of-00001", records)
    reader = array_record_module.ArrayRecordReader(str(tmp_path / "webvid-train.array_record-00000-of-00001"))
    assert reader.read_all() == [r for _, r in records]
    reader.close()


def test_cli_bad_input_is_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "artv_jax.data.webvid", "build", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=False)

    missing = run(f"--manual_dir={tmp_path / 'nope'}", f"--data_dir={tmp_path / 'tfds'}")
    assert missing.returncode == 2 and not missing.stdout
    assert missing.stderr == (f"artv_jax.data.webvid: error: --manual_dir {tmp_path / 'nope'} is not a directory "
                              f"(the WebVid CSVs and mp4s)\n")
    (tmp_path / "empty").mkdir()
    no_csv = run(f"--manual_dir={tmp_path / 'empty'}", f"--data_dir={tmp_path / 'tfds'}")
    assert no_csv.returncode == 2 and len(no_csv.stderr.splitlines()) == 1
    assert no_csv.stderr.startswith(f"artv_jax.data.webvid: error: no results CSV in {tmp_path / 'empty'} matches")
    assert not (tmp_path / "tfds").exists()


def test_cli_without_beam_says_how_to_install_it(manual_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if not installed
    with pytest.raises(SystemExit) as exit_info:
        webvid.main(["build", f"--manual_dir={manual_dir}", f"--data_dir={tmp_path}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("artv_jax.data.webvid: error: building webvid needs Apache Beam: "
                                       "pip install -e '.[beam]'\n")


def test_unknown_beam_option_raises():
    pytest.importorskip("apache_beam")
    with pytest.raises(ValueError, match=r"unknown Beam pipeline options \['direct_num_wrokers'\]"):
        webvid.beam_options(["--runner=FnApiRunner", "--direct_num_wrokers=2"])


def test_unknown_config_field_raises():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="unknown webvid config fields"):
        webvid.builder("tiny", frame_rate=3)
