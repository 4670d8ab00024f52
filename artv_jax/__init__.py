"""ART·V in JAX/Flax: auto-regressive text-to-video diffusion on ported Stable Diffusion."""

__version__ = "0.1.0"
