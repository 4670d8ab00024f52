"""Flax linen modules: Stable Diffusion (UNet, VAE, CLIP text) and the ART·V additions."""
