"""Diffusion math: noise schedules, the masked-diffusion objective and samplers."""
