"""`artv_jax.pixels`: uint8 <-> [-1, 1], exact round trip on numpy and jax arrays."""

import jax.numpy as jnp
import numpy as np

from artv_jax.pixels import to_model_range, to_uint8


def test_round_trip_and_ends():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    for y in (to_model_range(x), to_model_range(jnp.asarray(x))):
        assert y.dtype == np.float32 and float(y.min()) == -1.0 and float(y.max()) == 1.0
        np.testing.assert_array_equal(to_uint8(y), x)
    np.testing.assert_array_equal(to_uint8(np.array([-2.0, -1.0, 0.0, 1.0, 3.0])), [0, 0, 128, 255, 255])
