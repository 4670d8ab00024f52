"""Parity of the Flax CLIP (vision tower + projected text embeddings) with transformers' `CLIPModel`.

Tiny random `CLIPModel`s are saved with `save_pretrained` (one also rewritten
to the transformers 4 layout with `position_ids` buffers), loaded with
`load_clip`, and compared on the same pixels and token ids; the image
preprocessing is compared with transformers' PIL `CLIPImageProcessor`.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from artv_jax.metrics.clip_vision import clipsim, frame_similarities, load_clip, preprocess  # noqa: E402
from artv_jax.weights import WeightMappingError  # noqa: E402

# name -> (text config, vision config, write transformers 4 position_ids buffers)
CONFIGS = {
    "quick_gelu": (
        dict(vocab_size=60, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=12, bos_token_id=58, eos_token_id=59, pad_token_id=1),
        dict(hidden_size=24, intermediate_size=36, num_hidden_layers=2, num_attention_heads=3, image_size=32,
             patch_size=8), False),
    "gelu-legacy_eos2+position_ids": (
        dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
             max_position_embeddings=10, hidden_act="gelu", layer_norm_eps=1e-6, bos_token_id=0, eos_token_id=2,
             pad_token_id=1),
        dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, image_size=30,
             patch_size=6, hidden_act="gelu", layer_norm_eps=1e-6), True),
}


def _write_clip(path, text, vision, t4_layout, seed=0):
    torch.manual_seed(seed)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                           projection_dim=20)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path)
    if t4_layout:
        state = load_file(path / "model.safetensors")
        state["text_model.embeddings.position_ids"] = np.arange(text["max_position_embeddings"])[None]
        n = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
        state["vision_model.embeddings.position_ids"] = np.arange(n)[None]
        save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return model


def _rel(got, want):
    got, want = np.asarray(got), np.asarray(want)
    err = np.abs(got - want).max()
    return err, err / np.abs(want).max()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_embeddings_match_transformers(name, tmp_path):
    text, vision, t4 = CONFIGS[name]
    model = _write_clip(tmp_path, text, vision, t4)
    clip = load_clip(tmp_path)
    rng = np.random.default_rng(0)
    size = vision["image_size"]
    pixels = rng.standard_normal((3, size, size, 3)).astype(np.float32)
    ids = rng.integers(3, text["vocab_size"] - 2, (3, text["max_position_embeddings"]))
    ids[:, 0] = text["bos_token_id"]
    for row, end in enumerate((4, 7, ids.shape[1] - 1)):
        ids[row, end:] = text["eos_token_id"]
    if text["eos_token_id"] == 2:  # legacy configs pool at the largest id: make it the end token's position
        ids[ids == 2] = text["vocab_size"] - 1
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)))
        want_image = model.visual_projection(model.vision_model(torch.from_numpy(pixels.transpose(0, 3, 1, 2)))
                                             .pooler_output).numpy()
        want_text = model.text_projection(model.text_model(torch.from_numpy(ids)).pooler_output).numpy()
    image = clip.image_embeds(jnp.asarray(pixels))
    texts = clip.text_embeds(jnp.asarray(ids, jnp.int32))
    for what, got, want in (("image", image, want_image), ("text", texts, want_text)):
        err, rel = _rel(got, want)
        print(f"{name} {what}_embeds: max abs {err:.2e}, rel to max {rel:.2e}")
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # CLIPModel's own outputs are the L2-normalised embeddings; its logits are exp(logit_scale) * cosine.
    unit = np.asarray(image) / np.linalg.norm(np.asarray(image), axis=-1, keepdims=True)
    np.testing.assert_allclose(unit, out.image_embeds.numpy(), atol=1e-5)
    assert clip.logit_scale == pytest.approx(model.logit_scale.item())
    cosines = frame_similarities(np.asarray(image)[:, None], np.asarray(texts))[:, 0]
    np.testing.assert_allclose(np.exp(clip.logit_scale) * cosines, np.diag(out.logits_per_image.numpy()), rtol=1e-4)


def test_strict_loading_names_every_bad_key(tmp_path):
    text, vision, _ = CONFIGS["quick_gelu"]
    _write_clip(tmp_path, text, vision, False)
    state = load_file(tmp_path / "model.safetensors")
    del state["vision_model.encoder.layers.1.mlp.fc2.bias"]
    state["text_projection.weight"] = state["text_projection.weight"][:-1]
    state["vision_model.head.weight"] = np.zeros(3, np.float32)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(WeightMappingError) as e:
        load_clip(tmp_path)
    message = str(e.value)
    assert "missing keys (1): vision_model.encoder.layers.1.mlp.fc2.bias" in message
    assert "unexpected keys (1): vision_model.head.weight" in message
    assert "misshaped key text_projection.weight" in message
    config = json.loads((tmp_path / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "relu"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotImplementedError, match="hidden_act='relu'"):
        load_clip(tmp_path)


@pytest.mark.parametrize("shape", [(240, 320), (300, 224), (64, 64)])
def test_preprocess_matches_transformers_clip_image_processor(shape):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    frames = np.random.default_rng(1).integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    want = CLIPImageProcessorPil()(images=list(frames), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    got = preprocess(frames[None])[0]
    assert got.shape == (2, 224, 224, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_clipsim_is_the_mean_cosine():
    text = np.array([[1.0, 0.0], [0.0, 2.0]])
    frames = np.array([[[3.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, -1.0]]])  # cosines (1, 0.707), (1, -1)
    assert clipsim(frames, text) == pytest.approx((1 + 2 ** -0.5) / 4)
    assert clipsim(frames, text, scale=100) == pytest.approx(100 * (1 + 2 ** -0.5) / 4)
    assert clipsim(frames[:, 0], text) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="need image_embeds"):
        frame_similarities(frames, text[:1])


def test_jit_compatible(tmp_path):
    text, vision, _ = CONFIGS["quick_gelu"]
    _write_clip(tmp_path, text, vision, False)
    clip = load_clip(tmp_path)
    pixels = jnp.zeros((2, vision["image_size"], vision["image_size"], 3))
    np.testing.assert_allclose(jax.jit(clip.image_embeds)(pixels), clip.image_embeds(pixels), atol=1e-5)
