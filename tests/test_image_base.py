"""Stage 1 of the shapes default: a text-to-image base written as a diffusers-format directory, read back
exactly, and ART·V starting from it through `model.pretrained` as it starts from Stable Diffusion."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from artv_jax import components as components_lib
from artv_jax import config as config_lib
from artv_jax import export, image_base, train
from configs import shapes as shapes_config


def tiny_config(**image_base):
    c = shapes_config.get_config()
    c.model.unet.update(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D",) * 2,
                        up_block_types=("CrossAttnUpBlock2D",) * 2, num_heads=2, norm_num_groups=8,
                        addition_embed_type_num_heads=2)
    c.model.text.update(hidden_size=16, num_heads=2, num_layers=1)
    c.image_base.update(num_steps=3, global_batch=4, warmup_steps=1, eval_images=2, **image_base)
    c.eval.num_steps = 2
    c.log_every = 1
    return config_lib.validate(c)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A stage-1 base trained for 3 steps, and its config."""
    config = tiny_config()
    out = str(tmp_path_factory.mktemp("stage1") / "image_base")
    scores = image_base.train(config, out, progress=False)
    return out, config, scores


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_stage_one_writes_a_whole_directory_with_scores(base):
    out, config, scores = base
    assert sorted(os.listdir(out)) == ["artv_config.json", "scheduler", "scores.json", "text_encoder", "tokenizer",
                                       "unet"]
    assert not os.path.exists(out + ".partial")
    assert json.load(open(os.path.join(out, "scores.json"))) == scores
    assert scores["steps"] == 3 and np.isfinite(scores["final_loss"]) and 0.0 <= scores["clean_fraction"] <= 1.0
    with pytest.raises(FileExistsError, match="exists"):
        image_base.train(config, out, progress=False)


def test_the_base_reads_back_bit_for_bit(base, tmp_path):
    out, config, _ = base
    b = components_lib.load_base(out)
    assert b.unet.config.out_channels == b.unet.config.in_channels == 12  # 2x2 patches of RGB, no mask
    assert b.autoencoder == components_lib.PixelSpace(2)
    assert b.schedule.prediction_type == config.schedule.prediction_type
    assert b.tokenize("a red square moving right on a black background").tolist() == \
        components_lib.scratch_text_encoder(config)[0]("a red square moving right on a black background").tolist()
    # Written again from what was read, the weights are the same bytes.
    again = str(tmp_path / "again")
    export.export_image_model(b.unet.config, b.unet_params, b.text_encoder, b.params["text"], b.tokenize, b.schedule,
                              2, 32, again)
    b2 = components_lib.load_base(again)
    for one, two in ((b.unet_params, b2.unet_params), (b.params["text"], b2.params["text"])):
        f1, f2 = _flat(one), _flat(two)
        assert f1.keys() == f2.keys() and all(np.array_equal(f1[k], f2[k]) for k in f1)
    with pytest.raises(ValueError, match="text-to-image base"):
        export.import_diffusers(out)


def test_art_v_from_the_base_starts_as_the_base(base):
    """Through `model.pretrained`, ART·V is the base UNet plus a mask channel and a zero adapter: with the
    references dropped its prediction is the base's exactly."""
    out, config, _ = base
    c = config.copy_and_resolve_references()
    c.model.pretrained = out
    comps, params = components_lib.build(config_lib.validate(c))
    b = components_lib.load_base(out)
    key = jax.random.PRNGKey(1)
    x = jax.random.normal(key, (2, 16, 16, 12))
    t = jnp.array([10, 700])
    tokens = jnp.asarray(np.stack([b.tokenize("a red square moving right on a black background")] * 2))
    text = comps.encode_text(params, tokens)
    want = b.unet.apply({"params": b.unet_params}, x, t, text)
    refs = jnp.zeros((2, 16, 16, 12 * comps.model.config.num_ref_frames))
    pred, mask_logits = comps.model.apply({"params": params["artv"]}, x, t, text, refs,
                                          jnp.zeros((2, 16, 16, 12)), jnp.zeros((2,)), drop_refs=jnp.ones((2,), bool))
    np.testing.assert_array_equal(np.asarray(pred), np.asarray(want))
    np.testing.assert_allclose(np.asarray(mask_logits), config.model.artv.mask_init_bias, atol=1e-6)


def test_the_trainer_builds_the_base_once_and_starts_from_it(base, tmp_path, monkeypatch):
    out, config, _ = base
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    calls = []
    monkeypatch.setattr(image_base, "train", lambda c, path, progress: calls.append(path) or
                        __import__("shutil").copytree(out, path))
    started = train.with_image_base(config, workdir)
    assert calls == [os.path.join(workdir, "image_base")] and started.model.pretrained == calls[0]
    again = train.with_image_base(config, workdir)  # resumed: the base exists and is not rebuilt
    assert len(calls) == 1 and again.model.pretrained == calls[0]
    assert train.with_image_base(started, workdir) is started  # already pretrained: nothing to do


@pytest.mark.slow  # a second stage 1 and a stage 2: two more compiles, ~2 min on the 2-core CPU
def test_two_stage_run_end_to_end(base, tmp_path):
    """`train_and_evaluate` with image_base.num_steps > 0: stage 1 into <workdir>/image_base, ART·V from it;
    the run loads (text encoder: the base's, unchanged) and exports like any other."""
    _, config, _ = base
    c = config.copy_and_resolve_references()
    c.train.update(num_steps=2, global_batch=4, warmup_steps=1)
    c.checkpoint.every = 2
    c.sample.at_end = False
    c.progress = False
    workdir = tmp_path / "run"
    train.train_and_evaluate(c, str(workdir))
    base_dir = workdir / "image_base"
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["pretrained"] == str(base_dir) and (base_dir / "scores.json").is_file()

    from artv_jax import runs

    comps, params, run_config = runs.load(str(workdir))
    b = components_lib.load_base(str(base_dir))
    f1, f2 = _flat(params["text"]), _flat(b.params["text"])
    assert f1.keys() == f2.keys() and all(np.array_equal(f1[k], f2[k]) for k in f1)
    assert isinstance(comps.autoencoder, components_lib.PixelSpace) and comps.model.latent_channels == 12
    export.export(comps, params, run_config, str(tmp_path / "exported"))
    again, again_params = export.import_diffusers(str(tmp_path / "exported"))
    assert _flat(again_params["artv"]).keys() == _flat(params["artv"]).keys()
