"""How this fixture was made, with the code of af88d69 (a checkout of that commit as the working directory):

    python tests/data/checkpoint_af88d69/make.py /tmp/run   # then copy checkpoints/, config.json, expected_video.npz

A tiny shapes run's checkpoint (2 steps) and one video sampled from it; tests/test_configs.py loads it with
today's code and expects the same video.
"""
import os
import sys

sys.path.insert(0, os.getcwd())
import numpy as np  # noqa: E402
from artv_jax import sample, train  # noqa: E402
from configs import shapes as shapes_config  # noqa: E402

c = shapes_config.get_config()
c.model.unet = dict(block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, num_heads=2,
                    norm_num_groups=8, addition_embed_type="text", addition_embed_type_num_heads=2,
                    resnet_time_scale_shift="scale_shift")
c.model.text = dict(hidden_size=16, num_layers=1, num_heads=2, max_length=12)
c.train.num_steps = 2
c.train.global_batch = 2
c.train.warmup_steps = 1
c.checkpoint.every = 2
c.checkpoint.async_save = False
c.log_every = 1
c.progress = False
c.sample.at_end = False
c.eval.num_videos = 0
c.compilation_cache = ""
wd = sys.argv[1]
train.train_and_evaluate(c, wd)
comps, params, config = sample.load(wd)
req = sample.make_request(["a red square moving right on a black background"], [], 3, "", "", comps.frame_size)
video = sample.sample(comps, params, config, req, seed=0, steps=2, progress=False)
np.savez_compressed(os.path.join(wd, "expected_video.npz"), video=video)
print(video.shape, video.mean())
