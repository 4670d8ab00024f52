"""The discrete-time DDPM forward process of Stable Diffusion and the DDIM update.

    schedule = NoiseSchedule.from_config(sd.scheduler_config)   # a diffusers scheduler_config.json dict
    x_t = schedule.add_noise(x0, noise, t)                       # t: (B,) int timesteps, x0: (B, H, W, C)
    x0_hat, eps_hat = schedule.to_x0_eps(model_output, x_t, t)   # ε, v or x0, per `prediction_type`
    x_prev = schedule.ddim_step(model_output, t, t_prev, x_t, eta, noise)

Notation (as in DDPM/DDIM): betas β_t for t = 0 … T-1, ᾱ_t = ∏_{s≤t} (1 − β_s),
and the forward process x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε. The velocity of
"Progressive distillation" (SD 2.x's v-prediction) is v = √ᾱ_t · ε − √(1 − ᾱ_t) · x0.
Given x_t, any one of (x0, ε, v) determines the other two (all maps are affine), so
a network may predict any of them: ε ("epsilon"), v ("v_prediction") or x0
itself ("sample", diffusers' name).

The tables are computed in float64 NumPy (as the original LDM code did) and
used as float32 constants; all math returns float32. `NoiseSchedule` is a frozen,
hashable dataclass of plain Python values: close over it or pass it as a
static argument to `jax.jit`; the methods are pure and work under `jit`,
`lax.scan` and `lax.fori_loop` with traced, array-valued timesteps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# `v_loss_weight`'s cap: an x0 error counts at most as at √(1 − ᾱ) = 0.05, the noise floor of Li and He's
# x0-prediction with a v loss (their t ≤ 0.95 clip).
V_LOSS_WEIGHT_CAP = 400.0

# Keys of diffusers scheduler configs that only affect *their* samplers (which
# we replace by DDIM), or only matter when a key we reject is switched on.
# They leave β, ᾱ and the parameterisation unchanged, so they are accepted and ignored.
_SAMPLER_ONLY_KEYS = frozenset({
    "skip_prk_steps", "variance_type", "interpolation_type", "use_karras_sigmas", "use_exponential_sigmas",
    "use_beta_sigmas", "sigma_min", "sigma_max", "timestep_type", "final_sigmas_type", "solver_order",
    "algorithm_type", "solver_type", "lower_order_final", "euler_at_final", "use_lu_lambdas",
    "lambda_min_clipped", "predict_x0", "disable_corrector", "solver_p", "dynamic_thresholding_ratio",
    "sample_max_value", "shift_terminal", "time_shift_type", "use_dynamic_shifting", "flow_shift",
})
# Keys that would change the math and that we do not implement: accepted only at these values.
_UNSUPPORTED_KEYS = {"thresholding": False, "rescale_betas_zero_snr": False, "use_flow_sigmas": False}


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """β/ᾱ tables, ε/v/x0 conversions and the DDIM step of one diffusers scheduler config.

    Defaults are those of diffusers' `DDIMScheduler`, so that
    `NoiseSchedule.from_config(c)` behaves like `DDIMScheduler.from_config(c)`
    (SD configs set every field that matters explicitly).

    Attributes:
      num_train_timesteps: T; timesteps are the integers 0 … T-1.
      beta_start, beta_end: β_0 and β_{T-1}.
      beta_schedule: "linear" (β linear in t) or "scaled_linear" (√β linear in t; SD's).
      prediction_type: what the network predicts: "epsilon", "v_prediction" or "sample" (x0).
      trained_betas: explicit β_t (length T), overriding the three fields above.
      steps_offset: added to the DDIM timesteps with "leading" spacing (SD: 1).
      set_alpha_to_one: ᾱ after the last DDIM step: 1 if True, else ᾱ_0 (SD: False).
      timestep_spacing: how DDIM picks its timesteps: "leading", "trailing" or "linspace".
      clip_sample: clip the predicted x0 to ±clip_sample_range inside `ddim_step`.
      clip_sample_range: the clipping bound.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    trained_betas: tuple[float, ...] | None = None
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    timestep_spacing: str = "leading"
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    def __post_init__(self):
        for key, value, allowed in (("beta_schedule", self.beta_schedule, BETA_SCHEDULES),
                                    ("prediction_type", self.prediction_type, PREDICTION_TYPES),
                                    ("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)):
            if value not in allowed:
                raise ValueError(f"unsupported scheduler config {key}={value!r}; expected one of {allowed}.")
        if int(self.num_train_timesteps) != self.num_train_timesteps or self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive integer, got {self.num_train_timesteps!r}.")
        if self.steps_offset < 0:
            raise ValueError(f"steps_offset must be >= 0, got {self.steps_offset}.")
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be positive, got {self.clip_sample_range}.")
        t = self.num_train_timesteps
        if self.trained_betas is not None:
            betas = np.asarray(self.trained_betas, np.float64)
            if betas.shape != (t,):
                raise ValueError(f"trained_betas must have num_train_timesteps={t} entries, got shape {betas.shape}.")
        elif self.beta_schedule == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, t, dtype=np.float64)
        else:  # scaled_linear: √β is linear in t
            betas = np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, t, dtype=np.float64) ** 2
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError(f"every beta must lie in (0, 1); got min {betas.min()}, max {betas.max()} "
                             f"(beta_start={self.beta_start}, beta_end={self.beta_end}).")
        # Derived tables: not dataclass fields, so equality and hashing see only the config.
        object.__setattr__(self, "_betas", betas.astype(np.float32))
        object.__setattr__(self, "_alphas_cumprod", np.cumprod(1.0 - betas).astype(np.float32))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """The schedule of a diffusers scheduler config dict (`scheduler/scheduler_config.json`).

        Keys starting with "_" and keys that only steer other samplers are
        ignored; unknown keys, unsupported values of known keys, and the
        switched-on features we do not implement (thresholding, zero-SNR
        rescaling, flow sigmas) raise, naming the key.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs, unknown = {}, []
        for key, value in config.items():
            if key.startswith("_") or key in _SAMPLER_ONLY_KEYS:
                continue
            if key in _UNSUPPORTED_KEYS:
                if bool(value) != _UNSUPPORTED_KEYS[key]:
                    raise ValueError(f"unsupported scheduler config {key}={value!r}: only "
                                     f"{key}={_UNSUPPORTED_KEYS[key]} is implemented.")
                continue
            if key not in fields:
                unknown.append(key)
                continue
            if key == "trained_betas" and value is not None:
                value = tuple(float(b) for b in np.asarray(value).reshape(-1))
            if key == "clip_sample_range":
                value = float(value)
            kwargs[key] = value
        if unknown:
            raise ValueError(f"unknown scheduler config keys {sorted(unknown)}; known: {sorted(fields)} "
                             f"(and the sampler-only keys {sorted(_SAMPLER_ONLY_KEYS)}).")
        return cls(**kwargs)

    # ---------------------------------------------------------------- tables

    @property
    def betas(self) -> jax.Array:
        """(T,) float32 β_t."""
        return jnp.asarray(self._betas)

    @property
    def alphas_cumprod(self) -> jax.Array:
        """(T,) float32 ᾱ_t = ∏_{s≤t} (1 − β_s)."""
        return jnp.asarray(self._alphas_cumprod)

    @property
    def final_alpha_cumprod(self) -> float:
        """ᾱ used by DDIM after the last step (t_prev < 0): 1 if set_alpha_to_one else ᾱ_0."""
        return 1.0 if self.set_alpha_to_one else float(self._alphas_cumprod[0])

    def alpha_bar(self, t) -> jax.Array:
        """ᾱ at timesteps t (any shape), float32.

        Integer t: the table entry ᾱ_t, t in [0, T-1] (checked when t is concrete).
        Float t: a continuous timestep τ in [-1, T-1], linearly interpolated
        between table entries, with ᾱ_{-1} = 1 (no noise): exact at integers.
        """
        t = jnp.asarray(t)
        if jnp.issubdtype(t.dtype, jnp.integer):
            _check_range(t, 0, self.num_train_timesteps - 1, "timestep")
            return self.alphas_cumprod[t]
        if not jnp.issubdtype(t.dtype, jnp.floating):
            raise TypeError(f"timesteps must be integer or floating arrays, got dtype {t.dtype}.")
        table = jnp.concatenate([jnp.ones((1,), jnp.float32), self.alphas_cumprod])  # index τ + 1
        pos = jnp.clip(t.astype(jnp.float32) + 1.0, 0.0, float(self.num_train_timesteps))
        lo = jnp.minimum(jnp.floor(pos), self.num_train_timesteps - 1).astype(jnp.int32)
        w = pos - lo
        return table[lo] * (1.0 - w) + table[lo + 1] * w

    def alpha_bar_at_level(self, level) -> jax.Array:
        """ᾱ at a noise level s in [0, 1] (a fraction of the forward process), float32.

        s = 0 is clean (ᾱ = 1 exactly), s = (t + 1) / T is timestep t, s = 1 is t = T-1:
        ᾱ(s) = alpha_bar(τ = s·T − 1), interpolated between timesteps.
        """
        level = jnp.asarray(level, jnp.float32)
        return self.alpha_bar(level * self.num_train_timesteps - 1.0)

    def _coefs(self, t, like: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(√ᾱ_t, √(1 − ᾱ_t)) shaped to broadcast over `like` (t: () or (B,) against (B, ...))."""
        a = _expand(self.alpha_bar(t), like)
        return jnp.sqrt(a), jnp.sqrt(1.0 - a)

    # ------------------------------------------------- forward process, conversions

    def add_noise(self, x0, noise, t) -> jax.Array:
        """x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε."""
        x0, noise = _f32(x0), _f32(noise)
        sa, sb = self._coefs(t, x0)
        return sa * x0 + sb * noise

    def get_velocity(self, x0, noise, t) -> jax.Array:
        """v = √ᾱ_t · ε − √(1 − ᾱ_t) · x0 (diffusers' `get_velocity(sample, noise, t)`)."""
        x0, noise = _f32(x0), _f32(noise)
        sa, sb = self._coefs(t, x0)
        return sa * noise - sb * x0

    v_from_x0_eps = get_velocity

    def x0_from_eps(self, x_t, eps, t) -> jax.Array:
        """x0 = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t."""
        x_t, eps = _f32(x_t), _f32(eps)
        sa, sb = self._coefs(t, x_t)
        return (x_t - sb * eps) / sa

    def eps_from_x0(self, x_t, x0, t) -> jax.Array:
        """ε = (x_t − √ᾱ_t · x0) / √(1 − ᾱ_t)."""
        x_t, x0 = _f32(x_t), _f32(x0)
        sa, sb = self._coefs(t, x_t)
        return (x_t - sa * x0) / sb

    def x0_from_v(self, x_t, v, t) -> jax.Array:
        """x0 = √ᾱ_t · x_t − √(1 − ᾱ_t) · v."""
        x_t, v = _f32(x_t), _f32(v)
        sa, sb = self._coefs(t, x_t)
        return sa * x_t - sb * v

    def eps_from_v(self, x_t, v, t) -> jax.Array:
        """ε = √(1 − ᾱ_t) · x_t + √ᾱ_t · v."""
        x_t, v = _f32(x_t), _f32(v)
        sa, sb = self._coefs(t, x_t)
        return sb * x_t + sa * v

    def v_from_x0(self, x_t, x0, t) -> jax.Array:
        """The v that, with x_t, implies x0: v = (√ᾱ_t · x_t − x0) / √(1 − ᾱ_t)."""
        x_t, x0 = _f32(x_t), _f32(x0)
        sa, sb = self._coefs(t, x_t)
        return (sa * x_t - x0) / sb

    def to_x0_eps(self, model_output, x_t, t) -> tuple[jax.Array, jax.Array]:
        """(x0, ε) implied by the network output (ε, v or x0, per `prediction_type`) at x_t."""
        if self.prediction_type == "epsilon":
            return self.x0_from_eps(x_t, model_output, t), _f32(model_output)
        if self.prediction_type == "sample":
            return _f32(model_output), self.eps_from_x0(x_t, model_output, t)
        return self.x0_from_v(x_t, model_output, t), self.eps_from_v(x_t, model_output, t)

    def output_from_x0(self, x_t, x0, t) -> jax.Array:
        """The network output (ε, v or x0, per `prediction_type`) that implies x0 at x_t."""
        if self.prediction_type == "epsilon":
            return self.eps_from_x0(x_t, x0, t)
        if self.prediction_type == "sample":
            return _f32(x0)
        return self.v_from_x0(x_t, x0, t)

    def training_target(self, x0, noise, t) -> jax.Array:
        """What the network regresses at x_t = add_noise(x0, noise, t): ε, v = get_velocity(x0, ε, t), or x0."""
        if self.prediction_type == "epsilon":
            return _f32(noise)
        if self.prediction_type == "sample":
            return _f32(x0)
        return self.get_velocity(x0, noise, t)

    def v_loss_weight(self, t) -> jax.Array:
        """w_t such that w_t · (output error)² = (v error)², for the error of one output at x_t.

        Every output is affine in x0 at a given x_t, so its error maps to v's
        by a factor: v = (√ᾱ_t · x_t − x0) / √(1 − ᾱ_t) makes an x0 error count
        1 / (1 − ᾱ_t) in v, an ε error 1 / ᾱ_t, a v error 1. Weighting an x0 or ε
        loss by it trains on the v loss while the network predicts x0 or ε
        ("Back to basics: let denoising generative models denoise", Li and He
        2025: predict x0, train on v). It is capped at V_LOSS_WEIGHT_CAP, where
        the conversion blows up (x0 at t → 0, ε at t → T).
        """
        a = self.alpha_bar(t)
        if self.prediction_type == "sample":
            w = 1.0 / (1.0 - a)
        elif self.prediction_type == "epsilon":
            w = 1.0 / a
        else:
            w = jnp.ones_like(a)
        return jnp.minimum(w, V_LOSS_WEIGHT_CAP)

    # ------------------------------------------------------------------ DDIM

    def ddim_timesteps(self, num_inference_steps: int, spacing: str | None = None) -> np.ndarray:
        """The descending DDIM timesteps (int64) for `num_inference_steps`, as diffusers' `set_timesteps`.

        With T = num_train_timesteps, n = num_inference_steps, k = 0 … n-1:
          leading:  t_k = (n-1-k) · (T // n) + steps_offset         (SD: 981, 961, …, 1 for n=50)
          trailing: t_k = round(T − k · T / n) − 1                   (999, 979, …, 19)
          linspace: t_k = round((n-1-k) · (T − 1) / (n − 1))          (999, …, 0)
        `spacing` overrides the config's `timestep_spacing`. For trailing,
        diffusers builds the sequence with a float `np.arange` that for some n
        (61, 103, …) yields n+1 entries; here there are always exactly n.
        """
        spacing = self.timestep_spacing if spacing is None else spacing
        n, total = int(num_inference_steps), self.num_train_timesteps
        if n != num_inference_steps or not 1 <= n <= total:
            raise ValueError(f"num_inference_steps must be an integer in [1, num_train_timesteps={total}], "
                             f"got {num_inference_steps!r}.")
        k = np.arange(n)
        if spacing == "leading":
            ts = (n - 1 - k) * (total // n) + self.steps_offset
        elif spacing == "trailing":
            ts = np.round(total - k * (total / n)) - 1
        elif spacing == "linspace":
            ts = np.round(np.linspace(0, total - 1, n))[::-1]
        else:
            raise ValueError(f"unsupported timestep_spacing={spacing!r}; expected one of {TIMESTEP_SPACINGS}.")
        ts = np.asarray(ts, np.int64)
        if ts.max() > total - 1:
            raise ValueError(f"DDIM timesteps reach {ts.max()} >= num_train_timesteps={total} "
                             f"(steps_offset={self.steps_offset}, {n} steps, {spacing} spacing).")
        return ts

    def ddim_step(self, model_output, t, t_prev, x_t, eta=0.0, noise=None) -> jax.Array:
        """One DDIM update x_t → x_{t_prev} (Song et al. 2021, eq. 12 and 16), float32.

            (x̂0, ε̂) = to_x0_eps(model_output, x_t, t)     x̂0 clipped if clip_sample
            a = ᾱ_t,  a' = ᾱ_{t_prev} if t_prev >= 0 else final_alpha_cumprod
            σ = η · √((1 − a') / (1 − a) · (1 − a / a'))
            x_{t_prev} = √a' · x̂0 + √(1 − a' − σ²) · ε̂ + σ · z

        Args:
          model_output: the network output (ε, v or x0, per `prediction_type`), like x_t.
          t, t_prev: int timesteps, scalars or (B,) arrays (may be traced); t_prev < 0 means "to x0".
          x_t: (B, ...) the current sample.
          eta: η (scalar or (B,)); 0 is deterministic DDIM.
          noise: z, like x_t; needed unless eta is the Python number 0.
        """
        x_t = _f32(x_t)
        t_prev = jnp.asarray(t_prev)
        if not jnp.issubdtype(t_prev.dtype, jnp.integer):
            raise TypeError(f"t_prev must be an integer timestep, got dtype {t_prev.dtype}.")
        a = _expand(self.alpha_bar(jnp.asarray(t)), x_t)
        a_prev_table = self.alphas_cumprod[jnp.clip(t_prev, 0, self.num_train_timesteps - 1)]
        a_prev = _expand(jnp.where(t_prev >= 0, a_prev_table, jnp.float32(self.final_alpha_cumprod)), x_t)
        x0, eps = self.to_x0_eps(model_output, x_t, t)
        if self.clip_sample:  # like diffusers: ε̂ stays the unclipped one
            x0 = jnp.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        x_prev = jnp.sqrt(a_prev) * x0
        if isinstance(eta, (int, float)) and eta == 0:
            return x_prev + jnp.sqrt(1.0 - a_prev) * eps
        if noise is None:
            raise ValueError(f"ddim_step with eta={eta!r} needs `noise` (pass zeros for a traced eta of 0).")
        variance = (1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev)
        std = _expand(jnp.asarray(eta, jnp.float32), x_t) * jnp.sqrt(variance)
        return x_prev + jnp.sqrt(jnp.maximum(1.0 - a_prev - std ** 2, 0.0)) * eps + std * _f32(noise)


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _expand(a: jax.Array, like: jax.Array) -> jax.Array:
    """Appends unit axes to a per-example array (B,) (or a scalar) so it broadcasts over `like` (B, ...)."""
    if a.ndim > like.ndim:
        raise ValueError(f"timesteps of shape {a.shape} do not broadcast over an array of shape {like.shape}.")
    if a.ndim and a.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"{a.shape[0]} timesteps for a batch of {like.shape[0]} (array shape {like.shape}).")
    return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def _check_range(t: jax.Array, lo: int, hi: int, what: str) -> None:
    """Raises if a concrete (non-traced) integer array leaves [lo, hi]; traced values pass unchecked."""
    if isinstance(t, jax.core.Tracer):
        return
    t = np.asarray(t)
    if t.size and (t.min() < lo or t.max() > hi):
        raise ValueError(f"{what} out of range [{lo}, {hi}]: min {t.min()}, max {t.max()}.")
