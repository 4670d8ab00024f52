"""Mesh construction and per-parameter PartitionSpecs under the FSDP rules (8 simulated CPU devices)."""

import os
import subprocess
import sys
import textwrap

from helpers import REPO

CHILD = textwrap.dedent('''
    import jax, jax.numpy as jnp
    from jax.sharding import PartitionSpec as P
    from flax import traverse_util
    from artv_jax import sharding
    from artv_jax.models.unet import UNet2DConditionModel, UNetConfig

    assert jax.device_count() == 8
    mesh = sharding.make_mesh((-1, 4))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    for bad in [(3, -1), (2, 2), (-1, -1)]:
        try:
            sharding.make_mesh(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"mesh {bad} should fail")

    rules = (("batch", ("data", "fsdp")), ("out", "fsdp"), ("vocab", "fsdp"))
    cfg = UNetConfig(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=(1, 1),
                     transformer_layers_per_block=(1, 1), num_attention_heads=(2, 2), cross_attention_dim=(16, 16),
                     norm_num_groups=8)
    unet = UNet2DConditionModel(cfg)
    shapes = jax.eval_shape(unet.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,), jnp.int32),
                            jnp.zeros((1, 3, 16)))["params"]
    specs = traverse_util.flatten_dict(sharding.param_specs(shapes, rules, mesh))
    expect = {
        ("conv_in", "kernel"): P(None, None, None, "fsdp"),            # 3x3x4x32: out 32 over 4
        ("conv_in", "bias"): P(None),
        ("conv_out", "kernel"): P(None, None, None, None),             # out 4 over 4 divides...
        ("time_embedding", "linear_1", "kernel"): P(None, "fsdp"),
        ("down_blocks_0", "attentions_0", "transformer_blocks_0", "attn1", "to_q", "kernel"): P(None, "fsdp"),
        ("down_blocks_0", "attentions_0", "transformer_blocks_0", "norm1", "scale"): P(None),
        ("down_blocks_0", "attentions_0", "transformer_blocks_0", "attn2", "to_k", "kernel"): P(None, "fsdp"),
        ("mid_block", "resnets_0", "conv1", "kernel"): P(None, None, None, "fsdp"),
    }
    # conv_out has 4 outputs, which divides over fsdp=4: it is sharded; a 5-channel
    # (ART-V mask) conv_out would not be and must be replicated.
    expect[("conv_out", "kernel")] = P(None, None, None, "fsdp")
    for path, spec in expect.items():
        assert specs[path] == spec, (path, specs[path], spec)
    assert sharding.logical_to_spec(("conv", "conv", "in", "out"), (3, 3, 64, 5), rules, mesh) == P(None, None, None, None)
    # a mesh axis is used once per array
    assert sharding.logical_to_spec(("out", "out"), (8, 8), rules, mesh) == P("fsdp", None)
    # every leaf got a spec of its rank, and every kernel with divisible outputs is sharded
    flat = traverse_util.flatten_dict(shapes)
    for path, x in flat.items():
        assert len(specs[path]) == len(x.shape), path
        if path[-1] == "kernel" and x.shape[-1] % 4 == 0:
            assert specs[path][-1] == "fsdp", path
    # sharded init: params come out laid out as specified
    shardings = sharding.tree_shardings(shapes, rules, mesh)
    params = jax.jit(lambda k: unet.init(k, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,), jnp.int32),
                                         jnp.zeros((1, 3, 16)))["params"], out_shardings=shardings)(jax.random.PRNGKey(0))
    q = params["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]["to_q"]["kernel"]
    assert q.sharding.spec == P(None, "fsdp") and q.addressable_shards[0].data.shape == (32, 8)
    assert sharding.batch_spec(rules, 4) == P(("data", "fsdp"), None, None, None)
    print(sharding.describe(shapes, rules, mesh))
    print("OK")
''')


def test_fsdp_partition_specs_on_8_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
