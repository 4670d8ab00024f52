"""`configs/webvid.py` end to end on a tiny random SD directory and a tiny WebVid build: the real SD path.

Frozen VAE and CLIP inside the step, bf16 compute with fp32 master weights,
rematerialised UNet, the TFDS WebVid input, checkpoint, EMA samples.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")
tfds = pytest.importorskip("tensorflow_datasets")

from helpers import write_tiny_sd
from test_data_webvid import counter_video, write_mp4


@pytest.fixture(scope="module")
def webvid_tiny(tmp_path_factory):
    """Two 1-second clips as a prepared `webvid/tiny` (32x32, 8 fps, 8 frames)."""
    from artv_jax.data import webvid

    manual = tmp_path_factory.mktemp("manual")
    rows = ["videoid,contentUrl,duration,page_dir,name"]
    for i, (fps, h, w) in enumerate([(24, 48, 64), (30, 64, 48)]):
        write_mp4(manual / "pd" / f"{i}.mp4", counter_video(fps, h, w), fps)
        rows.append(f"{i},https://x/{i}.mp4,PT00H00M01S,pd,clip number {i}")
    (manual / "results_2M_train.csv").write_text("\n".join(rows) + "\n")
    data_dir = tmp_path_factory.mktemp("tfds")
    webvid.builder("tiny", data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return data_dir


@pytest.mark.slow
def test_webvid_config_fine_tunes_a_pretrained_sd(tmp_path, webvid_tiny):
    from artv_jax import checkpoint, train
    from configs import webvid as webvid_config

    sd_root = tmp_path / "sd"
    write_tiny_sd(sd_root)
    c = webvid_config.get_config("256")
    c.model.pretrained = str(sd_root)
    c.data.update(tfds_name="webvid/tiny", data_dir=str(webvid_tiny), size=32, num_frames=8, stride_range=(1, 2))
    c.train.update(num_steps=3, global_batch=2, warmup_steps=1)
    c.mesh.shape = (-1, 1)
    c.checkpoint.every = 1000
    c.log_every = 1
    c.progress = False
    c.sample.update(num_frames=3, num_steps=2, chunk_size=2, prompts=("a clip",), every=0)
    workdir = tmp_path / "wd"

    results = train.train_and_evaluate(c, str(workdir))

    assert results["step"] == 3
    metrics = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(np.isfinite(m["loss"]) and m["nonfinite"] == 0 for m in metrics)
    saved = checkpoint.load_numpy(str(workdir), items=("params", "ema_params", "step"))
    assert int(saved["step"]) == 3
    assert set(saved["params"]) == {"artv"}  # VAE and text encoder frozen: not in the state
    assert saved["params"]["artv"]["unet"]["conv_in"]["kernel"].dtype == np.float32  # fp32 master weights
    # The zero-initialised adapter input conv has started to learn.
    assert np.abs(saved["params"]["artv"]["adapter"]["conv_in"]["kernel"]).max() > 0
    assert (workdir / "samples" / "final.gif").stat().st_size > 0
