"""The masked-diffusion training step: state, optimizer, loss, EMA; pure and jittable.

    tx = make_optimizer(config)
    state = TrainState.create(trainable, tx)
    step = make_train_step(components, config, tx)     # jit it with shardings (train.py)
    state, metrics = step(state, frozen, batch, key)

Parameters are split by path into a trainable tree (in the state, updated by
AdamW, with an EMA) and a frozen tree (the VAE, and whatever the config does
not train), merged again inside the step. A non-finite loss or gradient never
reaches the parameters: that update is skipped and `metrics["nonfinite"]`
counts it, so the host can stop loudly while every checkpoint stays good.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from artv_jax.components import Components
from artv_jax.diffusion import masked, weighting
from artv_jax.models.artv import anchor_contexts
from artv_jax.pixels import to_model_range


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (and is checkpointed)."""

    step: jax.Array
    params: Any  # the trainable parameters
    opt_state: Any
    ema_params: Any
    nonfinite: jax.Array  # updates skipped because the loss or a gradient was not finite

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   ema_params=jax.tree.map(jnp.copy, params), nonfinite=jnp.zeros((), jnp.int32))


def split_params(params: dict, trainable: tuple[str, ...]) -> tuple[dict, dict]:
    """(trainable, frozen) by '/'-joined path prefixes such as "artv/adapter" or "text"."""
    flat = traverse_util.flatten_dict(params, sep="/")
    unknown = [p for p in trainable if not any(k == p or k.startswith(p + "/") for k in flat)]
    if unknown:
        raise ValueError(f"train.trainable names {unknown}, which match no parameter; top-level groups: "
                         f"{sorted({k.split('/')[0] + '/' + k.split('/')[1] for k in flat})}.")
    is_trainable = lambda k: any(k == p or k.startswith(p + "/") for p in trainable)
    train = {k: v for k, v in flat.items() if is_trainable(k)}
    frozen = {k: v for k, v in flat.items() if not is_trainable(k)}
    return traverse_util.unflatten_dict(train, sep="/"), traverse_util.unflatten_dict(frozen, sep="/")


def merge_params(trainable: dict, frozen: dict) -> dict:
    """The inverse of `split_params`."""
    flat = {**traverse_util.flatten_dict(frozen, sep="/"), **traverse_util.flatten_dict(trainable, sep="/")}
    return traverse_util.unflatten_dict(flat, sep="/")


def make_optimizer(config, stage: str = "train") -> optax.GradientTransformation:
    """AdamW with linear warm-up then cosine decay, and global-norm gradient clipping.

    The peak learning rate, warm-up and length are those of `config[stage]` ("train", or "image_base" for
    stage 1); the final fraction, clipping, β2 and weight decay are `config.train`'s for both stages.
    """
    t, s = config.train, config[stage]
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=s.learning_rate, warmup_steps=s.warmup_steps,
        decay_steps=max(s.num_steps, s.warmup_steps + 1), end_value=s.learning_rate * t.final_lr_fraction)
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=t.adam_b2, weight_decay=t.weight_decay),
    )


def latents_of(components: Components, params: dict, frames_uint8) -> jax.Array:
    """uint8 frames (B, H, W, 3) -> latents (B, h, w, C), without gradient into the autoencoder."""
    frames = to_model_range(frames_uint8)
    return jax.lax.stop_gradient(components.autoencoder.encode(params.get("vae"), frames))


def loss_fn(components: Components, config, params: dict, batch: dict, key: jax.Array):
    """ART·V's masked-diffusion loss of one (micro)batch, and its metrics: encode, noise, predict, blend, loss.

    batch: target (B, H, W, 3), refs (B, R, H, W, 3), anchor (B, H, W, 3) uint8; tokens (B, L) int32;
    frame_index and stride (B,) int32 where `objective.start_t_logit_normal` is set (`weighting`).
    """
    obj, model, schedule = config.objective, components.model, components.schedule
    b, r = batch["refs"].shape[:2]
    k_t, k_noise, k_aug, k_drop = jax.random.split(key, 4)

    # Encode: the target, its R previous frames and the anchor (frame 0) to latents; the caption to embeddings,
    # replaced by the empty caption's (p_text) and the references dropped (p_ref) for classifier-free guidance.
    x0 = latents_of(components, params, batch["target"])
    refs_list = [latents_of(components, params, batch["refs"][:, i]) for i in range(r)]
    refs, x_ref = jnp.concatenate(refs_list, axis=-1), refs_list[-1]
    anchor = latents_of(components, params, batch["anchor"])
    if not config.model.use_anchor:  # ablation: no anchored conditioning
        anchor = jnp.zeros_like(anchor)
    text = components.encode_text(params, batch["tokens"])
    empty = components.encode_text(params, jnp.asarray(components.tokenize(""))[None])[0]
    drop_text, drop_ref = masked.drop_conditioning(k_drop, obj.p_text, obj.p_ref, b)
    text = masked.apply_text_drop(text, empty, drop_text)

    # Noise: the target at the drawn timesteps; the references noise-augmented to a level the model is told.
    w = weighting.tuple_weighting(k_t, batch, obj, schedule.num_train_timesteps, components.autoencoder.factor,
                                  drop_ref)
    t = w.timesteps
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
    x_t = schedule.add_noise(x0, noise, t)
    if obj.s_max > 0:
        refs_in, level = masked.augment_references(schedule, k_aug, refs, obj.s_max)
    else:  # ablation: no noise augmentation
        refs_in, level = refs, jnp.zeros((b,), jnp.float32)

    # Predict: the UNet's output p_θ and the mask logits, with the adapter's features of references and anchor.
    ctx = anchor_contexts(model, params["artv"], anchor, text) if model.config.anchor_attention else None
    pred, mask_logits = model.apply({"params": params["artv"]}, x_t, t, text, refs_in, anchor, level,
                                    drop_refs=drop_ref, anchor_contexts=ctx, anchor_keep=~drop_ref)

    # Blend: p̂ = m · p_θ + (1 − m) · p_ref (inside masked_loss); m = 1 where the references are dropped.
    mask = masked.mask_from_logits(mask_logits)
    if not config.model.use_mask:  # ablation: no mask head, m = 1
        mask = jnp.ones_like(mask)
    mask = masked.apply_ref_drop(mask, drop_ref)

    # Loss: MSE of the blended output against the schedule's target (ε, v or x0), or its error counted in v.
    target = schedule.training_target(x0, noise, t)
    t_weight = schedule.v_loss_weight(t) if obj.loss_space == "v" else None
    loss, metrics = masked.masked_loss(schedule, pred, mask, x_t, t, x_ref, target, weight=t_weight,
                                       pixel_weight=w.pixel_weight)
    if obj.unmasked_weight:
        # A scratch model has no pretrained image prior: once the mask copies the static background (m -> 0)
        # the masked loss stops training the UNet there. The plain loss on p_θ keeps it a denoiser everywhere,
        # which ART·V gets for free from Stable Diffusion.
        metrics = {**metrics, "loss_masked": loss}
        loss = loss + obj.unmasked_weight * metrics["loss_raw"]
        metrics["loss"] = loss
    return loss, metrics


def make_train_step(components: Components, config, tx: optax.GradientTransformation):
    """The step function (not yet jitted): (state, frozen, batch, key) -> (state, metrics)."""
    accum = config.train.grad_accum
    ema_decay = config.train.ema_decay

    def grads_of(trainable, frozen, batch, key):
        loss_of = lambda p: loss_fn(components, config, merge_params(p, frozen), batch, key)
        return jax.value_and_grad(loss_of, has_aux=True)(trainable)

    def step(state: TrainState, frozen: dict, batch: dict, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        if accum == 1:
            (loss, metrics), grads = grads_of(state.params, frozen, batch, key)
        else:
            micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

            def body(carry, xs):
                i, mb = xs
                out = grads_of(state.params, frozen, mb, jax.random.fold_in(key, i))
                return jax.tree.map(jnp.add, carry, out), None

            first = jax.tree.map(lambda x: x[0], micro)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                 jax.eval_shape(grads_of, state.params, frozen, first, key))
            ((loss, metrics), grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
            loss, metrics, grads = jax.tree.map(lambda x: x / accum, (loss, metrics, grads))

        def update(_):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
            return params, opt_state, ema

        finite = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        # A cond, not a per-leaf `where(finite, new, old)`: the same result, but hundreds of selects over
        # donated buffers took XLA:CPU ~15x longer to compile (25 s against > 6 min for the shapes model).
        params, opt_state, ema = jax.lax.cond(
            finite, update, lambda _: (state.params, state.opt_state, state.ema_params), None)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                               nonfinite=state.nonfinite + (~finite).astype(jnp.int32))
        metrics = {**metrics, "grad_norm": optax.global_norm(grads), "nonfinite": new_state.nonfinite,
                   "loss": loss}
        return new_state, metrics

    return step
