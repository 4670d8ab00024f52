"""WebVid: PyAV clip decoding, skip counting, and the `webvid` TFDS builder on mp4s written in the test."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

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
# (ids chosen so that with 2 and with 3 shards every shard keeps a video)
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


def test_shards_partition_rows(manual_dir):
    csv_path = manual_dir / "results_2M_train.csv"
    ids, total = [], collections.Counter()
    for i in range(3):
        counts = collections.Counter()
        ids += [k for k, _ in webvid.generate_clips(manual_dir, csv_path, fps=FPS, size=SIZE, num_frames=FRAMES,
                                                    counts=counts, shard_index=i, num_shards=3)]
        assert 0 < counts["rows"] < EXPECTED_REPORT["rows"]
        total.update(counts)
    # Shards partition the rows; a duplicate videoid lands in its original's shard and is caught there.
    assert sorted(ids) == sorted(GOOD)
    assert webvid.summarize(total) == EXPECTED_REPORT


def test_bad_csv_header_raises(tmp_path):
    (tmp_path / "x_train.csv").write_text("id,url,name\n1,u,n\n")
    with pytest.raises(ValueError, match="expected the WebVid header"):
        list(webvid.read_rows(tmp_path / "x_train.csv"))


def test_builder_keeps_skips_and_reports(manual_dir, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    builder = webvid.builder("tiny", data_dir=str(tmp_path))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    assert list(builder.info.splits) == ["train"]
    ds = builder.as_data_source("train")
    got = {ex["videoid"].decode(): ex for ex in (ds[i] for i in range(len(ds)))}
    assert sorted(got) == sorted(GOOD)
    for vid, (page, *_) in GOOD.items():
        expected = webvid.decode_clip(manual_dir / page / f"{vid}.mp4", fps=FPS, size=SIZE, num_frames=FRAMES)
        np.testing.assert_array_equal(np.stack(got[vid]["video"]), expected)  # PNG: lossless
    assert got["15"]["caption"].decode() == "slow ten fps square"
    # The report: in the builder's metadata, on disk, and after reloading.
    assert builder.info.metadata["report"] == {"train": EXPECTED_REPORT}
    assert json.loads((Path(builder.data_dir) / "metadata.json").read_text()) == {"report": {"train": EXPECTED_REPORT}}
    assert webvid.builder("tiny", data_dir=str(tmp_path)).info.metadata["report"] == {"train": EXPECTED_REPORT}


def test_sharded_build_and_merge(manual_dir, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    for i in range(2):
        webvid.builder("tiny", data_dir=str(tmp_path), shard_index=i, num_shards=2).download_and_prepare(
            download_config=config)
    report = webvid.merge_shards(str(tmp_path), "tiny", num_shards=2)
    assert report == {"train": EXPECTED_REPORT}
    assert [p.name for p in (tmp_path / "webvid").glob("tiny*")] == ["tiny"]  # shard datasets consumed
    merged = webvid.builder("tiny", data_dir=str(tmp_path))
    ds = merged.as_data_source("train")
    assert sorted(ds[i]["videoid"].decode() for i in range(len(ds))) == sorted(GOOD)
    assert merged.info.metadata["report"] == {"train": EXPECTED_REPORT}
    assert sum(len(merged.as_data_source(tfds.split_for_jax_process("train", process_index=p, process_count=2)))
               for p in range(2)) == 3


def test_unknown_config_field_raises():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="unknown webvid config fields"):
        webvid.builder("tiny", frame_rate=3)
