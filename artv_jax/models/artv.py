"""The ART·V network for one frame: SD UNet + reference adapter + mask channel (+ anchor attention).

    model, params = build_from_unet(unet, unet_params, ArtVConfig(...), key)   # from pretrained SD
    pred, mask_logits = model.apply({"params": params}, x_t, t, text, refs, anchor, ref_level)

`pred` is the UNet's prediction (epsilon or v, whatever the base model was
trained for) and `mask_logits` the extra output channel; `sigmoid(mask_logits)`
is the mask m of the masked-diffusion blend (`artv_jax.diffusion.masked`).
At initialisation the adapter outputs zeros and m = sigmoid(mask_init_bias)
is about 1, so the model starts as exactly the pretrained image model.

Parameters: `{"unet": ..., "adapter": ...}`; the UNet tree is diffusers'
(with `conv_out` one channel wider), the adapter tree is diffusers'
`T2IAdapter(adapter_type="full_adapter")`, so both export unchanged.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from artv_jax.models.adapter import FullAdapter, adapter_input
from artv_jax.models.layers import Dtype
from artv_jax.models.unet import UNet2DConditionModel, UNetConfig, count_transformer_blocks


@dataclasses.dataclass(frozen=True)
class ArtVConfig:
    """What ART·V adds to the image UNet.

    Attributes:
      num_ref_frames: R, previous frames given to the adapter (1 or 2).
      adapter_num_res_blocks: residual blocks per adapter stage.
      adapter_downscale_factor: pixel-unshuffle factor of the adapter input
        (1: the adapter works at latent resolution, matching the UNet's first block).
      mask_init_bias: initial bias of the mask channel; m = sigmoid(bias) (ours: 10, m ≈ 0.99995).
      anchor_attention: extend self-attention keys/values with the anchor
        frame's hidden states (ours, optional).
      anchor_timestep: the timestep at which the anchor's hidden states are computed.
    """

    num_ref_frames: int = 1
    adapter_num_res_blocks: int = 2
    adapter_downscale_factor: int = 1
    mask_init_bias: float = 10.0
    anchor_attention: bool = False
    anchor_timestep: int = 0

    def __post_init__(self):
        if self.num_ref_frames < 1:
            raise ValueError(f"num_ref_frames must be >= 1, got {self.num_ref_frames}.")


def make_adapter(unet_config: UNetConfig, config: ArtVConfig, dtype=jnp.float32) -> FullAdapter:
    """The reference adapter for a UNet: one stage per down block, input refs + anchor + level plane."""
    return FullAdapter(
        in_channels=unet_config.in_channels * (config.num_ref_frames + 1) + 1,
        channels=tuple(unet_config.block_out_channels),
        num_res_blocks=config.adapter_num_res_blocks,
        downscale_factor=config.adapter_downscale_factor,
        dtype=dtype,
    )


class ArtV(nn.Module):
    """UNet (latent + 1 mask output channels) steered by the reference adapter.

    Attributes:
      unet_config: the UNet architecture; `out_channels` must be the latent
        channels + 1 (the mask), `in_channels` the latent channels.
      config: the ART·V additions.
      dtype: compute dtype.
      remat: rematerialise UNet blocks in training.
    """

    unet_config: UNetConfig
    config: ArtVConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self):
        ucfg = self.unet_config
        if ucfg.out_channels != ucfg.in_channels + 1:
            raise ValueError(f"ArtV needs a UNet with out_channels = in_channels + 1 (the mask), got "
                             f"in_channels={ucfg.in_channels}, out_channels={ucfg.out_channels}.")
        self.unet = UNet2DConditionModel(ucfg, self.dtype, self.remat)
        self.adapter = make_adapter(ucfg, self.config, self.dtype)

    @property
    def latent_channels(self) -> int:
        return self.unet_config.in_channels

    def __call__(
        self,
        x_t: jax.Array,
        t: jax.Array,
        text: jax.Array,
        refs: jax.Array,
        anchor: jax.Array,
        ref_level: jax.Array,
        drop_refs: jax.Array | None = None,
        anchor_contexts=None,
        anchor_keep: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """One denoising prediction for the target frame.

        Args:
          x_t: (B, H, W, C) noisy latent of the target frame.
          t: (B,) diffusion timesteps.
          text: (B, L, D) text embeddings.
          refs: (B, H, W, R*C) the R previous frames' latents, oldest first,
            already noise-augmented to `ref_level`.
          anchor: (B, H, W, C) the first frame's latent.
          ref_level: (B,) the references' noise level in [0, 1], fed to the
            adapter as a constant plane.
          drop_refs: optional (B,) bool; where True the adapter's features are
            zeroed (conditioning dropout; the caller also forces m := 1).
          anchor_contexts: the anchor's cached hidden states (`anchor_contexts`
            below), used when `config.anchor_attention`; None attends to no
            anchor (frame 0 of a text-to-video).
          anchor_keep: optional (B,) bool: False ignores the anchor contexts
            for that example (reference dropout in training).

        Returns:
          (pred, mask_logits): (B, H, W, C) UNet prediction, (B, H, W, 1) logits.
        """
        features = self.adapter_features(refs, anchor, ref_level)
        if drop_refs is not None:
            keep = 1.0 - drop_refs.astype(self.dtype)[:, None, None, None]
            features = [f * keep for f in features]
        use_anchor = self.config.anchor_attention and anchor_contexts is not None
        out = self.unet(x_t, t, text, adapter_features=features,
                        anchor_contexts=anchor_contexts if use_anchor else None,
                        anchor_keep=anchor_keep if use_anchor else None)
        out = out.astype(jnp.float32)
        return out[..., :-1], out[..., -1:]

    def adapter_features(self, refs: jax.Array, anchor: jax.Array, ref_level: jax.Array) -> list[jax.Array]:
        """The adapter's feature maps, one per UNet down block."""
        expected = self.latent_channels * self.config.num_ref_frames
        if refs.shape[-1] != expected:
            raise ValueError(f"refs must have {self.config.num_ref_frames} frames x {self.latent_channels} "
                             f"channels = {expected} channels, got shape {refs.shape}.")
        return self.adapter(adapter_input(refs, anchor, ref_level).astype(self.dtype))

    def encode_anchor(self, anchor: jax.Array, text: jax.Array) -> jax.Array:
        """The UNet on the anchor alone at `anchor_timestep`; its self-attention inputs are sown."""
        t = jnp.full((anchor.shape[0],), self.config.anchor_timestep, jnp.int32)
        return self.unet(anchor, t, text)


def anchor_contexts(model: ArtV, params: dict, anchor: jax.Array, text: jax.Array) -> list[jax.Array]:
    """The anchor frame's per-transformer-block hidden states, for anchor attention.

    Computed once per video (the anchor does not change) and passed to every
    frame's `model.apply(..., anchor_contexts=...)`. The list is in the UNet's
    call order, which is the order its blocks consume it.
    """
    _, state = model.apply({"params": params}, anchor, text, method=ArtV.encode_anchor, mutable=["intermediates"])
    out = collect_self_attn_inputs(state["intermediates"])
    expected = sum(count_transformer_blocks(model.unet_config))
    if len(out) != expected:
        raise AssertionError(f"collected {len(out)} anchor states for {expected} transformer blocks.")
    return out


def collect_self_attn_inputs(intermediates: dict) -> list[jax.Array]:
    """The sown `self_attn_input`s of one apply, in call order (dicts keep insertion order)."""
    out = []

    def walk(tree):
        for key, value in tree.items():
            if key == "self_attn_input":
                out.extend(value)
            elif isinstance(value, dict):
                walk(value)

    walk(intermediates)
    return out


def init_params(model: ArtV, key: jax.Array, height: int, width: int, text_len: int = 8) -> dict:
    """Randomly initialised ART·V params (for models trained from scratch, e.g. the shapes world)."""
    ucfg = model.unet_config
    c = ucfg.in_channels
    args = (
        jnp.zeros((1, height, width, c)), jnp.zeros((1,), jnp.int32),
        jnp.zeros((1, text_len, ucfg.cross_attention_dim[0])),
        jnp.zeros((1, height, width, c * model.config.num_ref_frames)), jnp.zeros((1, height, width, c)),
        jnp.zeros((1,)),
    )
    params = jax.jit(model.init)(key, *args)["params"]
    return set_mask_bias(params, model.config.mask_init_bias)


def set_mask_bias(params: dict, bias: float) -> dict:
    """Zeroes the mask channel's conv_out kernel and sets its bias, so m = sigmoid(bias) everywhere."""
    conv_out = params["unet"]["conv_out"]
    conv_out = {
        "kernel": conv_out["kernel"].at[..., -1].set(0.0),
        "bias": conv_out["bias"].at[-1].set(bias),
    }
    return {**params, "unet": {**params["unet"], "conv_out": conv_out}}


def widen_unet_config(config: UNetConfig) -> UNetConfig:
    """The pretrained UNet's config with one more output channel for the mask."""
    return dataclasses.replace(config, out_channels=config.out_channels + 1)


def build_from_unet(
    unet: UNet2DConditionModel, unet_params: dict, config: ArtVConfig, key: jax.Array, dtype=None
) -> tuple[ArtV, dict]:
    """ART·V from a pretrained SD UNet (`pretrained.load_unet`): same weights, zero adapter, m ≈ 1."""
    ucfg = unet.config
    if ucfg.out_channels != ucfg.in_channels:
        raise ValueError(f"expected an image UNet with out_channels == in_channels, got {ucfg}.")
    model = ArtV(widen_unet_config(ucfg), config, dtype or unet.dtype)
    adapter = make_adapter(model.unet_config, config, model.dtype)
    size = 2 ** (len(ucfg.block_out_channels) - 1) * config.adapter_downscale_factor
    dummy = jnp.zeros((1, size, size, adapter.in_channels))
    adapter_params = jax.jit(adapter.init)(key, dummy)["params"]
    conv_out = unet_params["conv_out"]
    kernel = conv_out["kernel"]
    wide = {
        "kernel": jnp.concatenate([kernel, jnp.zeros(kernel.shape[:-1] + (1,), kernel.dtype)], axis=-1),
        "bias": jnp.concatenate([conv_out["bias"], jnp.full((1,), config.mask_init_bias, conv_out["bias"].dtype)]),
    }
    params = {"unet": {**unet_params, "conv_out": wide}, "adapter": adapter_params}
    return model, params
