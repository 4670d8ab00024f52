"""Configs: each ablation changes exactly its component; the webvid variants differ only in size and batch."""

from __future__ import annotations

import numpy as np
import pytest

from artv_jax import config as config_lib
from artv_jax.data import shapes as shapes_world
from configs import ablations, shapes, webvid
from helpers import REPO


def _flat(config) -> dict:
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix[:-1]] = value

    walk("", config.to_dict())
    return out


@pytest.mark.parametrize("variant, changed", [
    ("no_mask", {"model.use_mask": False}),
    ("no_noise", {"objective.s_max": 0.0, "sample.ref_level": 0.0}),
    ("no_anchor", {"model.use_anchor": False}),
    ("r1", {"model.artv.num_ref_frames": 1}),
    ("own_rollouts", {"objective.rollout_frames": 1, "objective.rollout_start": 1300}),
])
def test_each_ablation_changes_one_component_and_keeps_the_budget(variant, changed):
    base, variant_config = _flat(shapes.get_config()), _flat(ablations.get_config(variant))
    assert base.keys() == variant_config.keys()
    diff = {k: variant_config[k] for k in base if variant_config[k] != base[k]}
    assert diff == changed


def test_unknown_ablation_is_an_error():
    with pytest.raises(ValueError, match="unknown ablation 'no_text'"):
        ablations.get_config("no_text")


def test_webvid_variants():
    small, large = _flat(webvid.get_config("256")), _flat(webvid.get_config("512"))
    assert small["data.size"] == 256 and large["data.size"] == 512
    assert small["mesh.shape"][-1] == 4 and small["train.global_batch"] % 4 == 0
    assert {k for k in small if small[k] != large[k]} <= {"data.size", "data.tfds_name", "train.global_batch",
                                                          "train.learning_rate", "train.remat"}


def test_every_config_validates_and_leaves_no_key_to_a_default_it_does_not_know():
    for c in (shapes.get_config(), webvid.get_config("256"), webvid.get_config("512"),
              *(ablations.get_config(v) for v in ablations.VARIANTS)):
        assert _flat(config_lib.validate(c)).keys() == _flat(config_lib.defaults()).keys()


def test_validate_fills_missing_keys_with_their_defaults():
    partial = {"train": {"num_steps": 5}, "objective": {"change_weight": 2}}  # as an older config.json may be
    c = config_lib.validate(partial)
    assert c.train.num_steps == 5 and c.objective.change_weight == 2.0
    assert c.train.grad_accum == 1 and c.objective.start_t_logit_normal == () and c.sample.at_end
    assert c.mesh.rules == config_lib.defaults().mesh.rules
    with pytest.raises(AttributeError):  # validated configs are locked: a typo in the code fails loudly
        c.train.num_stpes = 3


@pytest.mark.parametrize("change, message", [
    ({"objective": {"change_wieght": 1.0}}, "config key 'objective.change_wieght' is unknown; objective has"),
    ({"optimizer": {}}, "config key 'optimizer' is unknown"),
    ({"train": {"num_steps": "many"}}, "config key 'train.num_steps' must be int like its default"),
    ({"train": 3}, "config key 'train' is a section"),
    ({"train": {"global_batch": 16, "grad_accum": 3}}, "config key 'train.grad_accum' must be >= 1 and divide"),
    ({"data": {"start_fraction": 1.5}}, "config key 'data.start_fraction' must be in \\[0, 1\\], got 1.5"),
    ({"data": {"bounce_fraction": 0.2, "stride_range": (1, 2)}},
     "config key 'data.bounce_fraction' needs the shapes world at data.stride_range \\(1, 1\\), got 0.2"),
    ({"objective": {"rollout_frames": -1}}, "config key 'objective.rollout_frames' must be >= 0, got -1"),
    ({"objective": {"rollout_fraction": 0.0}}, "config key 'objective.rollout_fraction' must be in \\(0, 1\\]"),
    ({"objective": {"rollout_steps": 0}}, "config key 'objective.rollout_steps' must be >= 1, got 0"),
    ({"objective": {"p_history_noise": 2.0}}, "config key 'objective.p_history_noise' must be in \\[0, 1\\]"),
    ({"sample": {"ref_level": 0.3, "history_level": 0.2}}, "config key 'sample.history_level' must be in"),
    ({"objective": {"t_logit_normal": (0.0, -1.0)}}, "config key 'objective.t_logit_normal' must be \\(\\)"),
    ({"data": {"name": "webvid"}}, "config key 'data.tfds_name' must name a TFDS data set"),
    ({"train": {"compute_dtype": "fp8"}}, "config key 'train.compute_dtype' must be float32, bfloat16"),
    ({"train": {"trainable": tuple("artv")}}, "config key 'train.trainable' must be a tuple of parameter paths"),
    ({"image_base": {"num_steps": -1}}, "config key 'image_base.num_steps' must be >= 0"),
])
def test_validate_names_the_bad_key_in_one_line(change, message):
    with pytest.raises(ValueError, match=message) as e:
        config_lib.validate(change)
    assert "\n" not in str(e.value)


def test_a_checkpoint_written_before_the_config_defaults_loads_and_samples_the_same_video():
    """tests/data/checkpoint_af88d69: a tiny shapes run written by the code of af88d69 (its make.py), whose
    config.json lacks the keys added since; loaded now, it gives the video that code sampled from it."""
    from artv_jax import runs, sample

    run = REPO / "tests" / "data" / "checkpoint_af88d69"
    comps, params, config = runs.load(str(run))
    assert tuple(config.model.text.vocabulary) == tuple(shapes_world.VOCABULARY)
    request = sample.make_request(["a red square moving right on a black background"], [], 3, "", "",
                                  comps.frame_size)
    video = sample.sample(comps, params, config, request, seed=0, steps=2, progress=False)
    np.testing.assert_array_equal(video, np.load(run / "expected_video.npz")["video"])


def test_the_train_cli_reports_a_bad_config_value_in_one_line(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "artv_jax.train", "--config=configs/shapes.py",
                          "--config.data.start_fraction=1.5", f"--workdir={tmp_path / 'wd'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "artv_jax.train: error: config key 'data.start_fraction' must be in [0, 1], got 1.5.")
    assert not (tmp_path / "wd").exists()  # nothing started
