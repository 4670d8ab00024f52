"""Input data: the embedded shapes world, WebVid, and the host-sharded pipeline."""
