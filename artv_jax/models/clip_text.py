"""The CLIP text encoder of Stable Diffusion as a Flax linen module.

Computes what transformers' `CLIPTextModel` computes (token + position
embeddings, pre-LayerNorm transformer with a causal mask, final LayerNorm), with
parameter paths that map 1:1 to its state-dict keys under `artv_jax.weights`:
`text_model/encoder/layers_0/self_attn/q_proj/kernel` <->
`text_model.encoder.layers.0.self_attn.q_proj.weight`. Layer norms and the
attention softmax run in float32 whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from artv_jax.weights import check_config


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's GELU approximation, `x * sigmoid(1.702 x)` (SD 1.x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def gelu(x: jax.Array) -> jax.Array:
    """The exact (erf) GELU (SD 2.x's OpenCLIP text encoder)."""
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Config keys that change what transformers' CLIPTextModel computes (or which
# model the directory holds), with the values this module implements. Any other
# key (projection_dim, initializer_*, pad/bos ids, dtype, generation settings,
# attention_dropout, which only acts in training) does not change the function
# of the frozen encoder and is ignored.
_SUPPORTED = {
    "model_type": lambda v: v == "clip_text_model",
    "architectures": lambda v: v is None or list(v) == ["CLIPTextModel"],
    "hidden_act": lambda v: v in ACTIVATIONS,
    "layer_norm_eps": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
    "eos_token_id": lambda v: v is None or _is_int(v),
    "pruned_heads": lambda v: not v,
    "is_decoder": lambda v: not v,
    "add_cross_attention": lambda v: not v,
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """The architecture of a CLIP text encoder; defaults are transformers' defaults.

    `eos_token_id` only affects `pooled_output` (which token is pooled).
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int | None = 49407

    def __post_init__(self):
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "max_position_embeddings")
        bad = [f"{k}={getattr(self, k)!r}" for k in sizes if not _is_int(getattr(self, k)) or getattr(self, k) <= 0]
        if bad:
            raise ValueError("CLIPTextConfig: sizes must be positive integers: " + ", ".join(bad))
        if self.hidden_act not in ACTIVATIONS:
            raise NotImplementedError(
                f"CLIPTextConfig: hidden_act={self.hidden_act!r} is not implemented; use one of {sorted(ACTIVATIONS)}.")
        if self.eos_token_id is not None and not _is_int(self.eos_token_id):
            raise NotImplementedError(f"CLIPTextConfig: eos_token_id must be one integer, got {self.eos_token_id!r}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"CLIPTextConfig: layer_norm_eps must be > 0, got {self.layer_norm_eps!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CLIPTextConfig: hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> CLIPTextConfig:
        """Builds the config from a transformers `config.json` dict.

        Raises:
            NotImplementedError: naming every key whose value changes the
                function of CLIPTextModel in a way this module does not
                implement (e.g. `hidden_act="gelu_new"`, a
                `CLIPTextModelWithProjection` or full `clip` checkpoint).
        """
        check_config("text_encoder", config, _SUPPORTED)
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in fields})


def pooled_output(last_hidden_state: jax.Array, input_ids: jax.Array, eos_token_id: int | None) -> jax.Array:
    """transformers' `pooler_output`: the final state at each sequence's end token, (B, D).

    The end token is the first `eos_token_id`, except for configs with the
    legacy `eos_token_id == 2` (e.g. SD 1.x's text encoder), where transformers
    takes the position of the largest token id, as we do.
    """
    if eos_token_id is None:
        raise ValueError("pooled_output: the config has no eos_token_id, so there is no end token to pool.")
    if eos_token_id == 2:
        index = jnp.argmax(input_ids, axis=-1)
    else:
        index = jnp.argmax((input_ids == eos_token_id).astype(jnp.int32), axis=-1)
    return jnp.take_along_axis(last_hidden_state, index[:, None, None], axis=1)[:, 0]


def layer_norm(config: CLIPTextConfig, param_dtype: Any, name: str) -> nn.LayerNorm:
    """A LayerNorm that computes in float32 with the exact (two-pass) variance."""
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.float32, param_dtype=param_dtype,
                        use_fast_variance=False, name=name)


class _Embeddings(nn.Module):
    """Token embedding plus learned absolute position embedding."""

    config: CLIPTextConfig
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg = self.config
        embed = functools.partial(nn.Embed, features=cfg.hidden_size, dtype=self.dtype,
                                  param_dtype=self.param_dtype, embedding_init=nn.initializers.normal(0.02))
        tokens = embed(cfg.vocab_size, name="token_embedding")(input_ids)
        positions = embed(cfg.max_position_embeddings, name="position_embedding")(
            jnp.arange(input_ids.shape[-1], dtype=jnp.int32))
        return tokens + positions[None]


class _Attention(nn.Module):
    """Multi-head self-attention, causal for text (softmax in float32 inside `dot_product_attention`)."""

    config: CLIPTextConfig
    dtype: Any
    param_dtype: Any
    causal: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        cfg = self.config
        batch, length, _ = x.shape
        dense = functools.partial(nn.Dense, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype)
        heads = (batch, length, cfg.num_attention_heads, cfg.head_dim)
        q = dense(name="q_proj")(x).reshape(heads)
        k = dense(name="k_proj")(x).reshape(heads)
        v = dense(name="v_proj")(x).reshape(heads)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=cfg.head_dim ** -0.5,
                                           is_causal=self.causal)
        return dense(name="out_proj")(out.reshape(batch, length, cfg.hidden_size))


class _MLP(nn.Module):
    """fc1 -> activation -> fc2."""

    config: CLIPTextConfig
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = nn.Dense(cfg.intermediate_size, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(x)
        x = ACTIVATIONS[cfg.hidden_act](x)
        return nn.Dense(cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(x)


class _EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    config: CLIPTextConfig
    dtype: Any
    param_dtype: Any
    causal: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        args = (self.config, self.dtype, self.param_dtype)
        h = layer_norm(self.config, self.param_dtype, "layer_norm1")(x).astype(self.dtype)
        x = x + _Attention(*args, causal=self.causal, name="self_attn")(h, mask)
        h = layer_norm(self.config, self.param_dtype, "layer_norm2")(x).astype(self.dtype)
        return x + _MLP(*args, name="mlp")(h)


class Encoder(nn.Module):
    """The stack of `num_hidden_layers` blocks; runs only the first `num_layers`.

    Causal for the text tower; the CLIP vision tower (`artv_jax.metrics.clip_vision`)
    uses it with `causal=False`. `config` needs CLIP's transformer fields
    (hidden_size, heads, intermediate_size, hidden_act, layer_norm_eps).
    """

    config: CLIPTextConfig
    dtype: Any
    param_dtype: Any
    causal: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, num_layers: int) -> jax.Array:
        for i in range(num_layers):
            x = _EncoderLayer(self.config, self.dtype, self.param_dtype, self.causal, name=f"layers_{i}")(x, mask)
        return x


class _TextTransformer(nn.Module):
    """transformers' `CLIPTextTransformer` (`text_model`): embeddings, encoder, final norm."""

    config: CLIPTextConfig
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, input_ids: jax.Array, mask: jax.Array | None, num_layers: int) -> jax.Array:
        args = (self.config, self.dtype, self.param_dtype)
        x = _Embeddings(*args, name="embeddings")(input_ids)
        x = Encoder(*args, name="encoder")(x, mask, num_layers)
        return layer_norm(self.config, self.param_dtype, "final_layer_norm")(x).astype(self.dtype)


class CLIPTextModel(nn.Module):
    """transformers' `CLIPTextModel` in Flax: token ids (B, L) -> hidden states (B, L, D).

    Attributes:
        config: the architecture.
        dtype: compute dtype (matmuls, residual stream, output); layer norms and
            the softmax are computed in float32.
        param_dtype: dtype of freshly initialised parameters (loaded parameters
            keep whatever dtype they are given).
    """

    config: CLIPTextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 output_layer: int | None = None) -> jax.Array:
        """Encodes token ids.

        Args:
            input_ids: (B, L) integer token ids, L <= max_position_embeddings.
            attention_mask: optional (B, L), 1 for tokens to attend to, 0 for
                padding; combined with the causal mask as transformers does.
                Stable Diffusion pipelines pass none.
            output_layer: None for `last_hidden_state`. Otherwise an index into
                transformers' `hidden_states` tuple (0 = embeddings, k = output
                of block k, negative counts from the end: -1 = last block,
                -2 = penultimate), followed by the final layer norm, as
                diffusers does for `clip_skip` (`output_layer = -(clip_skip + 1)`).
                Blocks after it are not computed.

        Returns:
            (B, L, hidden_size) in `dtype`.
        """
        cfg = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"CLIPTextModel: input_ids must be (batch, length), got shape {input_ids.shape}.")
        if input_ids.shape[1] > cfg.max_position_embeddings:
            raise ValueError(f"CLIPTextModel: sequence length {input_ids.shape[1]} exceeds "
                             f"max_position_embeddings={cfg.max_position_embeddings}.")
        num_layers = cfg.num_hidden_layers
        if output_layer is not None:
            if not -(num_layers + 1) <= output_layer <= num_layers:
                raise ValueError(f"CLIPTextModel: output_layer={output_layer} is out of range for "
                                 f"{num_layers} layers (hidden states 0..{num_layers}, or negative).")
            num_layers = output_layer % (num_layers + 1)
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"CLIPTextModel: attention_mask shape {attention_mask.shape} != "
                                 f"input_ids shape {input_ids.shape}.")
            mask = attention_mask.astype(bool)[:, None, None, :]
        return _TextTransformer(cfg, self.dtype, self.param_dtype, name="text_model")(
            input_ids.astype(jnp.int32), mask, num_layers)
