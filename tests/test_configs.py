"""Configs: each ablation changes exactly its component; the webvid variants differ only in size and batch."""

from __future__ import annotations

import pytest

from configs import ablations, shapes, webvid


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
    ("r2", {"model.artv.num_ref_frames": 2}),
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
