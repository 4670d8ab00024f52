"""CLIP image and text embeddings for CLIPSIM: a Flax CLIP vision tower and a loader for transformers `CLIPModel`s.

`CLIPVisionModelWithProjection` computes what transformers' model of that
name computes (`image_embeds`): patch embedding, class token, position
embedding, `pre_layrnorm`, a non-causal pre-LayerNorm transformer,
`post_layernorm` on the class token, `visual_projection`. Parameter paths map
1:1 to a `CLIPModel` state dict under `artv_jax.weights`
(`vision_model/encoder/layers_0/self_attn/q_proj/kernel` <->
`vision_model.encoder.layers.0.self_attn.q_proj.weight`). The text side is
`artv_jax.models.clip_text.CLIPTextModel`, pooled at the end token and
multiplied by `text_projection`.

    clip = load_clip("clip-vit-base-patch32")       # a CLIPModel directory
    images = clip.image_embeds(preprocess(frames, clip.image_size))
    texts = clip.text_embeds(token_ids)
    score = clipsim(images, texts)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from artv_jax import weights
from artv_jax.models.clip_text import ACTIVATIONS, CLIPTextConfig, CLIPTextModel, Encoder, layer_norm, pooled_output

# OpenAI CLIP's image normalisation (transformers' OPENAI_CLIP_MEAN / _STD).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# Config keys of a `clip_vision_model` config that change the function, with the values implemented.
_SUPPORTED = {
    "model_type": lambda v: v == "clip_vision_model",
    "hidden_act": lambda v: v in ACTIVATIONS,
    "num_channels": lambda v: v == 3,
}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """The architecture of a CLIP vision tower; defaults are transformers' (ViT-B/32).

    `projection_dim` is the `CLIPModel`'s (its top-level `projection_dim`),
    not the unused one inside `vision_config`.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512

    def __post_init__(self):
        sizes = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                 "patch_size", "projection_dim")
        bad = [f"{k}={getattr(self, k)!r}" for k in sizes if not _positive_int(getattr(self, k))]
        if bad:
            raise ValueError("CLIPVisionConfig: sizes must be positive integers: " + ", ".join(bad))
        if self.hidden_act not in ACTIVATIONS:
            raise NotImplementedError(f"CLIPVisionConfig: hidden_act={self.hidden_act!r} is not implemented.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CLIPVisionConfig: hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}.")
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPVisionConfig: image_size={self.image_size} is not a multiple of "
                             f"patch_size={self.patch_size}.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_dict(cls, vision_config: Mapping[str, Any], projection_dim: int = 512) -> CLIPVisionConfig:
        """From a `CLIPModel` config's `vision_config` dict and its top-level `projection_dim`."""
        weights.check_config("clip vision_config", vision_config, _SUPPORTED)
        fields = {f.name for f in dataclasses.fields(cls)} - {"projection_dim"}
        return cls(**{k: v for k, v in vision_config.items() if k in fields}, projection_dim=projection_dim)


class _Embeddings(nn.Module):
    """Patch embedding (a strided conv without bias), class token, learned position embedding."""

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        cfg = self.config
        p = cfg.patch_size
        patches = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                          name="patch_embedding")(pixels)
        patches = patches.reshape(pixels.shape[0], -1, cfg.hidden_size)
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (cfg.hidden_size,))
        x = jnp.concatenate([jnp.broadcast_to(cls, (pixels.shape[0], 1, cfg.hidden_size)), patches], axis=1)
        positions = nn.Embed(cfg.num_positions, cfg.hidden_size, name="position_embedding")(
            jnp.arange(cfg.num_positions, dtype=jnp.int32))
        return x + positions[None]


class _VisionTransformer(nn.Module):
    """transformers' `CLIPVisionTransformer` (`vision_model`): returns the pooled (class-token) output."""

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        x = _Embeddings(self.config, name="embeddings")(pixels)
        x = layer_norm(self.config, jnp.float32, "pre_layrnorm")(x)  # sic: transformers' name
        x = Encoder(self.config, jnp.float32, jnp.float32, causal=False, name="encoder")(x, None,
                                                                                 self.config.num_hidden_layers)
        return layer_norm(self.config, jnp.float32, "post_layernorm")(x[:, 0])


class CLIPVisionModelWithProjection(nn.Module):
    """transformers' `CLIPVisionModelWithProjection` in Flax (float32): pixels (B, S, S, 3) -> image_embeds (B, P).

    Pixels are CLIP-normalised (see `preprocess`), S = `config.image_size`.
    The embeddings are not L2-normalised.
    """

    config: CLIPVisionConfig = CLIPVisionConfig()

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        cfg = self.config
        if pixels.ndim != 4 or pixels.shape[1:] != (cfg.image_size, cfg.image_size, 3):
            raise ValueError(f"CLIP vision: pixels must be (batch, {cfg.image_size}, {cfg.image_size}, 3), "
                             f"got shape {pixels.shape}.")
        pooled = _VisionTransformer(cfg, name="vision_model")(pixels)
        return nn.Dense(cfg.projection_dim, use_bias=False, name="visual_projection")(pooled)


class CLIP(NamedTuple):
    """A loaded `CLIPModel`: the two towers, their parameters, the text projection (D_text, P) and logit scale."""

    vision: CLIPVisionModelWithProjection
    vision_params: dict
    text: CLIPTextModel
    text_params: dict
    text_projection: jax.Array
    logit_scale: float

    @property
    def image_size(self) -> int:
        return self.vision.config.image_size

    def image_embeds(self, pixels: jax.Array) -> jax.Array:
        """(B, S, S, 3) CLIP-normalised pixels -> (B, P) image embeddings (transformers' `image_embeds`)."""
        return self.vision.apply({"params": self.vision_params}, pixels)

    def text_embeds(self, input_ids: jax.Array) -> jax.Array:
        """(B, L) token ids -> (B, P) text embeddings (transformers' `text_embeds`): end-token state @ projection."""
        hidden = self.text.apply({"params": self.text_params}, input_ids)
        return pooled_output(hidden, input_ids, self.text.config.eos_token_id) @ self.text_projection


_IGNORE = [r"(text|vision)_model\.embeddings\.position_ids"]


def load_clip(path: str | os.PathLike) -> CLIP:
    """Loads a transformers `CLIPModel` directory (config.json + *.safetensors or *.bin) strictly, in float32.

    Raises:
        FileNotFoundError: no config.json or no weight file.
        NotImplementedError: a config value the Flax modules do not implement.
        WeightMappingError: naming every missing, unexpected and misshaped key of
            the whole model (both towers, both projections, logit_scale).
    """
    path = os.fspath(path)
    config = weights.read_config(path)
    if config.get("model_type") != "clip":
        raise NotImplementedError(f"{path!r} holds a {config.get('model_type')!r} model, not a CLIPModel ('clip').")
    # transformers 4 configs may carry `*_config_dict` overrides beside `*_config`.
    text_dict = {**config.get("text_config", {}), **(config.get("text_config_dict") or {})}
    vision_dict = {**config.get("vision_config", {}), **(config.get("vision_config_dict") or {})}
    projection_dim = config.get("projection_dim", 512)
    text_config = CLIPTextConfig.from_dict({"model_type": "clip_text_model", **text_dict})
    vision_config = CLIPVisionConfig.from_dict({"model_type": "clip_vision_model", **vision_dict}, projection_dim)

    vision = CLIPVisionModelWithProjection(vision_config)
    text = CLIPTextModel(text_config)
    size = vision_config.image_size
    vision_target = jax.eval_shape(vision.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    text_target = jax.eval_shape(text.init, jax.random.key(0),
                                 jax.ShapeDtypeStruct((1, text_config.max_position_embeddings), jnp.int32))
    target = {
        **vision_target["params"], **text_target["params"],
        "text_projection": {"kernel": jax.ShapeDtypeStruct((text_config.hidden_size, projection_dim), jnp.float32)},
        "logit_scale": jax.ShapeDtypeStruct((), jnp.float32),
    }
    params = weights.convert_state_dict(weights.read_state_dict(path), target, component="clip", ignore=_IGNORE,
                                        dtype=np.float32)
    params = jax.tree.map(jnp.asarray, params)
    return CLIP(
        vision=vision,
        vision_params={k: params[k] for k in ("vision_model", "visual_projection")},
        text=text,
        text_params={"text_model": params["text_model"]},
        text_projection=params["text_projection"]["kernel"],
        logit_scale=float(params["logit_scale"]),
    )


def preprocess(frames, size: int = 224) -> np.ndarray:
    """uint8 frames (..., H, W, 3) -> float32 (..., size, size, 3): transformers' `CLIPImageProcessor`.

    Short side resized to `size` with PIL bicubic (long side `int(size * long / short)`),
    centre crop size x size, scaled to [0, 1], normalised with CLIP's mean and std.
    """
    from PIL import Image

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"preprocess: frames must be uint8 (..., height, width, 3), got {frames.dtype} {frames.shape}.")
    lead, (h, w) = frames.shape[:-3], frames.shape[-3:-1]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    top, left = int((new_h - size) / 2.0), int((new_w - size) / 2.0)
    out = np.empty((int(np.prod(lead)), size, size, 3), np.float32)
    for i, frame in enumerate(frames.reshape(-1, h, w, 3)):
        image = np.asarray(Image.fromarray(frame).resize((new_w, new_h), Image.Resampling.BICUBIC))
        out[i] = image[top:top + size, left:left + size].astype(np.float32) / 255.0
    return ((out - CLIP_MEAN) / CLIP_STD).reshape(*lead, size, size, 3)


def frame_similarities(image_embeds, text_embeds) -> np.ndarray:
    """Cosine similarities (N, F) between each video's frame embeddings (N, F, P) and its text embedding (N, P)."""
    image_embeds, text_embeds = np.asarray(image_embeds, np.float64), np.asarray(text_embeds, np.float64)
    if image_embeds.ndim != 3 or text_embeds.shape != (image_embeds.shape[0], image_embeds.shape[2]):
        raise ValueError(f"frame_similarities: need image_embeds (N, F, P) and text_embeds (N, P), got "
                         f"{image_embeds.shape} and {text_embeds.shape}.")
    image = image_embeds / np.linalg.norm(image_embeds, axis=-1, keepdims=True)
    text = text_embeds / np.linalg.norm(text_embeds, axis=-1, keepdims=True)
    return np.einsum("nfp,np->nf", image, text)


def clipsim(image_embeds, text_embeds, scale: float = 1.0) -> float:
    """CLIPSIM: the cosine similarity of frame and caption embeddings, averaged over frames, then videos.

    Args:
        image_embeds: (N, F, P) frame embeddings of N videos of F frames (or (N, P), one frame each).
        text_embeds: (N, P) embeddings of each video's caption.
        scale: 1 (default) gives the raw cosine, the convention of the
            text-to-video papers that report MSR-VTT CLIPSIM (GODIVA, NÜWA,
            Make-A-Video, VideoFusion, ModelScope: values near 0.2-0.3);
            100 gives CLIP-score-style values (without CLIPScore's clipping at 0).
    """
    image_embeds = np.asarray(image_embeds)
    if image_embeds.ndim == 2:
        image_embeds = image_embeds[:, None]
    return float(scale * frame_similarities(image_embeds, text_embeds).mean(axis=1).mean())
