"""Stage 1 of a scratch model: the text-to-image model that ART·V assumes, trained on single frames.

ART·V teaches a pretrained image model (Stable Diffusion) to move. A model trained from scratch on the
shapes world has no such base, so the default run makes one first:

    train(config, "<workdir>/image_base")   # called by `artv_jax.train` when config.image_base.num_steps > 0

trains a UNet as `config.model` describes it (out_channels = the latent channels: no mask) on the frames
of the training clips and their captions, with the plain diffusion loss, text dropout for classifier-free
guidance and the config's noise schedule; the text encoder stays at its initialisation, as SD's CLIP stays
frozen under ART·V. It writes the EMA weights as a diffusers-format directory (`export.export_image_model`)
that `components.load_base` reads through `config.model.pretrained`: the ART·V stage then takes the same
path a user takes from SD 1.5. The directory appears whole or not at all (written beside it, then renamed),
so an interrupted stage 1 is simply run again. One process (it is minutes on a CPU); `scores.json` in the
directory holds the text-to-image samples' shapes-world scores.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from artv_jax import components as components_lib
from artv_jax.components import PixelSpace
from artv_jax.data import pipeline
from artv_jax.diffusion import masked, weighting
from artv_jax.models.unet import UNet2DConditionModel
from artv_jax.pixels import to_model_range, to_uint8
from artv_jax.train_step import make_optimizer

log = logging.getLogger("artv_jax.image_base")

SCORES = "scores.json"


def train(config, out: str, *, progress: bool = True) -> dict:
    """Trains stage 1 for `config.image_base.num_steps` steps and writes the model to `out`; returns its scores.

    `config` is a validated run config of a scratch model (`model.pretrained` empty).
    """
    if config.model.pretrained:
        raise ValueError("image_base trains a scratch model's base; model.pretrained already names one "
                         f"({config.model.pretrained!r}).")
    if jax.process_count() > 1:
        raise ValueError("the image base is built by one process: build it first with one process "
                         "(image_base.num_steps > 0), then start the multi-process run from it.")
    if os.path.exists(out):
        raise FileExistsError(f"{out!r} exists; the image base is built only where there is none.")
    b = config.image_base
    t0 = time.time()

    # --- Model: the scratch UNet without the mask channel, the text encoder at its initialisation.
    autoencoder = PixelSpace(config.model.patch)
    tokenize, text_encoder = components_lib.scratch_text_encoder(config)
    unet_config = components_lib.scratch_unet_config(config, autoencoder.channels, autoencoder.channels)
    unet = UNet2DConditionModel(unet_config)
    schedule = components_lib.schedule_from_config(config.schedule)
    size = config.data.size // autoencoder.factor
    k_unet, k_text, k_step, k_eval = jax.random.split(jax.random.PRNGKey(config.seed), 4)
    tokens0 = jnp.zeros((1, config.model.text.max_length), jnp.int32)
    text_params = text_encoder.init(k_text, tokens0)["params"]
    unet_params = jax.jit(unet.init)(k_unet, jnp.zeros((1, size, size, autoencoder.channels)),
                                     jnp.zeros((1,), jnp.int32), jnp.zeros((1, 1, text_encoder.config.hidden_size)))
    unet_params = unet_params["params"]

    # --- Optimiser: AdamW, warm-up then cosine, clipping (train's settings), EMA of the weights.
    tx = make_optimizer(config, "image_base")
    empty = text_encoder.apply({"params": text_params}, jnp.asarray(tokenize(""))[None])[0]

    def loss_fn(params, frames, tokens, key):
        k_t, k_noise, k_drop = jax.random.split(key, 3)
        x0 = autoencoder.encode(None, to_model_range(frames))
        text = text_encoder.apply({"params": text_params}, tokens)
        drop_text, _ = masked.drop_conditioning(k_drop, b.p_text, 0.0, x0.shape[0])
        text = masked.apply_text_drop(text, empty, drop_text)
        t = weighting.training_timesteps(k_t, x0.shape[0], schedule.num_train_timesteps, b.t_logit_normal)
        noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
        pred = unet.apply({"params": params}, schedule.add_noise(x0, noise, t), t, text)
        per_example = jnp.mean((pred.astype(jnp.float32) - schedule.training_target(x0, noise, t)) ** 2,
                               axis=(1, 2, 3))
        if config.objective.loss_space == "v":  # as ART·V's loss (train_step.loss_fn)
            per_example = schedule.v_loss_weight(t) * per_example
        return jnp.mean(per_example)

    @jax.jit
    def step(params, opt_state, ema, frames, tokens, i):
        loss, grads = jax.value_and_grad(loss_fn)(params, frames, tokens, jax.random.fold_in(k_step, i))
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # The decay warms up, (1 + i) / (10 + i) below ema_decay: a short stage's EMA must not keep a share of
        # the random initialisation (0.998 ** 1000 = 13% of it after 1000 steps otherwise).
        decay = jnp.minimum(b.ema_decay, (1.0 + i) / (10.0 + i))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        return params, opt_state, ema, loss

    # --- Input: the frames of the training clips (each tuple's target frame) with their captions.
    iterator = pipeline.TupleIterator(
        train_source(config), global_batch=b.global_batch, tokenize=tokenize,
        stride_range=tuple(config.data.stride_range), seed=config.seed + 1)

    # --- Loop.
    from tqdm.auto import tqdm

    params, ema, opt_state = unet_params, unet_params, tx.init(unet_params)
    losses = []
    bar = tqdm(total=b.num_steps, unit="step", desc="image base", disable=not progress, dynamic_ncols=True)
    try:
        for i in range(b.num_steps):
            batch = next(iterator)
            params, opt_state, ema, loss = step(params, opt_state, ema, batch["target"], batch["tokens"], i)
            bar.update(1)
            if i == 0:
                jax.block_until_ready(loss)
                t_first = time.time()  # the first step includes compilation
            if (i + 1) % config.log_every == 0 or i + 1 == b.num_steps:
                losses.append(float(loss))
                if not np.isfinite(losses[-1]):
                    raise FloatingPointError(f"image base: non-finite loss at step {i + 1}; lower "
                                             "image_base.learning_rate.")
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        bar.close()
        iterator.close()
    jax.block_until_ready(ema)
    train_seconds = time.time() - t0

    # --- Scores of text-to-image samples, then the directory, written whole.
    scores = {"steps": b.num_steps, "train_seconds": round(train_seconds, 1), "final_loss": losses[-1],
              "steps_per_s": round((b.num_steps - 1) / max(time.time() - t_first, 1e-9), 3)}
    if b.eval_images and config.data.name == "shapes":
        scores.update(text_to_image_scores(unet, ema, text_encoder, text_params, tokenize, schedule, autoencoder,
                                           config, k_eval))
    from artv_jax import export

    partial = out.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    export.export_image_model(unet_config, jax.device_get(ema), text_encoder, jax.device_get(text_params),
                              tokenize, schedule, autoencoder.patch, config.data.size, partial, run_config=config)
    with open(os.path.join(partial, SCORES), "w") as f:
        json.dump(scores, f, indent=2)
    os.replace(partial, out)
    log.info("image base written to %s: %s", out, json.dumps(scores))
    return scores


def train_source(config) -> pipeline.HostShard:
    from artv_jax import train  # the run's training split, read as stage 2 reads it

    return train.make_source(config)


def sample_images(unet, params, text_encoder, text_params, tokenize, schedule, autoencoder, prompts, key, *,
                  size: int, num_steps: int, guidance: float, batch: int = 16) -> np.ndarray:
    """uint8 (N, size, size, 3) text-to-image samples: deterministic DDIM with classifier-free guidance."""
    ts = np.asarray(schedule.ddim_timesteps(num_steps), np.int32)
    prev = np.concatenate([ts[1:], [-1]]).astype(np.int32)
    latent = size // autoencoder.factor
    empty = text_encoder.apply({"params": text_params}, jnp.asarray(tokenize(""))[None])

    @jax.jit
    def sample(tokens, key):
        cond = text_encoder.apply({"params": text_params}, tokens)
        uncond = jnp.broadcast_to(empty, cond.shape)
        x = jax.random.normal(key, (tokens.shape[0], latent, latent, autoencoder.channels), jnp.float32)

        def body(x, tt):
            t, t_prev = tt
            tb = jnp.full((x.shape[0] * 2,), t)
            out = unet.apply({"params": params}, jnp.concatenate([x, x]), tb, jnp.concatenate([cond, uncond]))
            c, u = jnp.split(out.astype(jnp.float32), 2)
            return schedule.ddim_step(u + guidance * (c - u), t, t_prev, x), None

        x, _ = jax.lax.scan(body, x, (jnp.asarray(ts), jnp.asarray(prev)))
        return autoencoder.decode(None, x)

    out = []
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start:start + batch])
        padded = chunk + [chunk[-1]] * (batch - len(chunk))
        tokens = jnp.asarray(np.stack([tokenize(p) for p in padded]))
        out.append(np.asarray(to_uint8(sample(tokens, jax.random.fold_in(key, start))))[:len(chunk)])
    return np.concatenate(out)


def text_to_image_scores(unet, params, text_encoder, text_params, tokenize, schedule, autoencoder, config,
                         key) -> dict:
    """Shapes-world scores of `image_base.eval_images` samples for the first test captions, at the run's
    sampling settings (`eval.num_steps` DDIM steps, `sample.text_guidance`)."""
    from artv_jax.data import shapes
    from artv_jax.metrics import shapes_score

    captions = [shapes.generate_example("test", k, config.data.size, config.data.num_frames)["caption"]
                for k in range(config.image_base.eval_images)]
    images = sample_images(unet, params, text_encoder, text_params, tokenize, schedule, autoencoder, captions, key,
                           size=config.data.size, num_steps=config.eval.num_steps,
                           guidance=config.sample.text_guidance)
    s = shapes_score.score_batch(images[:, None], captions, drift_frames=())
    return {k: s[k] for k in ("background_accuracy", "colour_accuracy", "shape_accuracy", "clean_fraction",
                              "one_object_fraction", "area_error", "colour_distance")}
