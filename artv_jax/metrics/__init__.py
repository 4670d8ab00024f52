"""Video generation metrics: Fréchet video distance on I3D features and CLIP similarity, with their zero-shot CLIs."""
