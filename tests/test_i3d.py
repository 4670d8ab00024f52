"""Parity of the Flax I3D with pytorch-i3d, and strict loading of its state dicts.

The torch side is a re-implementation of piergiaj/pytorch-i3d's `InceptionI3d`
written here (same module names, so `state_dict()` has the real key layout;
same dynamic "SAME" padding; zero-padded max pools; fixed 2x7x7 average pool)
with every channel count divided by `DIV`, random weights and random batch
norm running statistics.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from artv_jax.metrics.i3d import I3DConfig, load_i3d, min_input_shape, preprocess  # noqa: E402
from artv_jax.metrics.i3d import InceptionI3d as FlaxI3D  # noqa: E402
from artv_jax.weights import WeightMappingError  # noqa: E402

DIV = 16  # channel divisor of the tiny network
NUM_CLASSES = 7


def _pad_same(x, kernel, stride):
    pads = []
    for size, k, s in zip(x.shape[2:], kernel, stride):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads.append((total // 2, total - total // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class MaxPool3dSamePadding(nn.MaxPool3d):
    def forward(self, x):
        return super().forward(_pad_same(x, self.kernel_size, self.stride))


class Unit3D(nn.Module):
    def __init__(self, in_channels, output_channels, kernel_shape=(1, 1, 1), stride=(1, 1, 1), activation_fn=F.relu,
                 use_batch_norm=True, use_bias=False):
        super().__init__()
        self._kernel, self._stride = tuple(kernel_shape), tuple(stride)
        self._activation_fn, self._use_batch_norm = activation_fn, use_batch_norm
        self.conv3d = nn.Conv3d(in_channels, output_channels, kernel_shape, stride, padding=0, bias=use_bias)
        if use_batch_norm:
            self.bn = nn.BatchNorm3d(output_channels, eps=0.001, momentum=0.01)

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self._kernel, self._stride))
        if self._use_batch_norm:
            x = self.bn(x)
        return self._activation_fn(x) if self._activation_fn is not None else x


class InceptionModule(nn.Module):
    def __init__(self, in_channels, out):
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0])
        self.b1a = Unit3D(in_channels, out[1])
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, out[3])
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3))
        self.b3a = MaxPool3dSamePadding(kernel_size=(3, 3, 3), stride=(1, 1, 1), padding=0)
        self.b3b = Unit3D(in_channels, out[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    ORDER = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3", "Mixed_3b",
             "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
             "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")

    def __init__(self, num_classes=400, div=1):
        super().__init__()

        def c(n):
            return max(1, n // div)

        def mixed(cin, out):
            out = [c(n) for n in out]
            return InceptionModule(cin, out), out[0] + out[2] + out[4] + out[5]

        def pool(k, s):
            return MaxPool3dSamePadding(kernel_size=k, stride=s, padding=0)

        self.add_module("Conv3d_1a_7x7", Unit3D(3, c(64), (7, 7, 7), (2, 2, 2)))
        self.add_module("MaxPool3d_2a_3x3", pool((1, 3, 3), (1, 2, 2)))
        self.add_module("Conv3d_2b_1x1", Unit3D(c(64), c(64)))
        self.add_module("Conv3d_2c_3x3", Unit3D(c(64), c(192), (3, 3, 3)))
        self.add_module("MaxPool3d_3a_3x3", pool((1, 3, 3), (1, 2, 2)))
        cin = c(192)
        table = {"Mixed_3b": [64, 96, 128, 16, 32, 32], "Mixed_3c": [128, 128, 192, 32, 96, 64],
                 "Mixed_4b": [192, 96, 208, 16, 48, 64], "Mixed_4c": [160, 112, 224, 24, 64, 64],
                 "Mixed_4d": [128, 128, 256, 24, 64, 64], "Mixed_4e": [112, 144, 288, 32, 64, 64],
                 "Mixed_4f": [256, 160, 320, 32, 128, 128], "Mixed_5b": [256, 160, 320, 32, 128, 128],
                 "Mixed_5c": [384, 192, 384, 48, 128, 128]}
        for name in self.ORDER[5:]:
            if name == "MaxPool3d_4a_3x3":
                self.add_module(name, pool((3, 3, 3), (2, 2, 2)))
            elif name == "MaxPool3d_5a_2x2":
                self.add_module(name, pool((2, 2, 2), (2, 2, 2)))
            else:
                module, cin = mixed(cin, table[name])
                self.add_module(name, module)
        self.avg_pool = nn.AvgPool3d(kernel_size=[2, 7, 7], stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.logits = Unit3D(cin, num_classes, activation_fn=None, use_batch_norm=False, use_bias=True)

    def extract_features(self, x):
        for name in self.ORDER:
            x = self._modules[name](x)
        return self.avg_pool(x)

    def forward(self, x):
        return self.logits(self.dropout(self.extract_features(x))).squeeze(3).squeeze(3)


def _smooth_clips(seed, batch=2, size=(17, 193, 232)):
    """Smooth random fields plus a little noise in [-1, 1], NCDHW: clips that differ in content."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(-1, 1, (batch, 3, 4, 5, 6)).astype(np.float32))
    clip = F.interpolate(coarse, size=size, mode="trilinear").numpy()
    return np.clip(clip + rng.uniform(-0.1, 0.1, clip.shape).astype(np.float32), -1, 1)


def _torch_i3d(seed=0):
    """The tiny network with random weights and random running statistics near those of real inputs.

    Running statistics are first set to one calibration batch's (so activations stay normalised and the
    features depend on the input through all 50-odd layers), then perturbed, as are the affine parameters.
    """
    torch.manual_seed(seed)
    model = InceptionI3d(NUM_CLASSES, DIV)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.normal_(0, math.sqrt(2.0 / (m.weight[0].numel())))
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
            elif isinstance(m, nn.BatchNorm3d):
                m.momentum = None  # cumulative average: one batch sets the running statistics
        model.train()(torch.from_numpy(_smooth_clips(seed + 100)))
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn_like(m.running_mean))
                m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
    return model


@pytest.fixture(scope="module")
def torch_model():
    return _torch_i3d()


def test_parity_with_pytorch_i3d(torch_model):
    # 17 frames, 193x232: the smallest height the pool allows, 2 time and 2 width positions left after
    # the 2x7x7 pool (so the averaging over them is tested), odd and even sizes for the SAME padding.
    assert min_input_shape() == (9, 193)
    clip = _smooth_clips(0)
    with torch.no_grad():
        x = torch.from_numpy(clip)
        want_features = torch_model.extract_features(x).mean(dim=(2, 3, 4)).numpy()
        want_logits = torch_model(x).mean(dim=tuple(range(2, 4))).numpy()  # (B, C, T', W') -> (B, C)
    # Not degenerate: the two clips' features differ on the scale of the features themselves.
    assert np.abs(want_features[0] - want_features[1]).max() > 0.1 * np.abs(want_features).max() > 0
    module, params = load_i3d(torch_model.state_dict(), I3DConfig(num_classes=NUM_CLASSES, width_divisor=DIV))
    assert module.config.feature_dim == want_features.shape[1]
    features, logits = jax.jit(module.apply)({"params": params}, jnp.asarray(clip.transpose(0, 2, 3, 4, 1)))
    for got, want in ((features, want_features), (logits, want_logits)):
        got = np.asarray(got)
        err = np.abs(got - want).max()
        print(f"max abs {err:.2e}, rel to max {err / np.abs(want).max():.2e}")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_loads_torch_files_and_reports_every_bad_key(torch_model, tmp_path):
    config = I3DConfig(num_classes=NUM_CLASSES, width_divisor=DIV)
    state = torch_model.state_dict()
    torch.save(state, tmp_path / "i3d.pt")
    _, params = load_i3d(tmp_path / "i3d.pt", config)
    np.testing.assert_array_equal(params["Mixed_3b"]["b1b"]["bn"]["running_var"],
                                  state["Mixed_3b.b1b.bn.running_var"].numpy())
    bad = dict(state)
    del bad["Mixed_4c.b2b.bn.running_var"]
    bad["Mixed_3b.b0.conv3d.weight"] = bad["Mixed_3b.b0.conv3d.weight"][:, :-1]
    bad["Mixed_9z.b0.conv3d.weight"] = torch.zeros(1)
    with pytest.raises(WeightMappingError) as e:
        load_i3d(bad, config)
    message = str(e.value)
    assert "missing keys (1): Mixed_4c.b2b.bn.running_var" in message
    assert "unexpected keys (1): Mixed_9z.b0.conv3d.weight" in message
    assert "misshaped key Mixed_3b.b0.conv3d.weight" in message
    with pytest.raises(FileNotFoundError, match="no I3D weight file"):
        load_i3d(tmp_path / "absent.pt", config)


def test_preprocess_maps_to_minus_one_one_at_224():
    videos = np.zeros((2, 16, 64, 80, 3), np.uint8)
    videos[..., 0] = 255
    x = np.asarray(preprocess(videos))
    assert x.shape == (2, 16, 224, 224, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(x[..., 1:], -1.0, atol=1e-6)
    with pytest.raises(ValueError, match="too small for the 2x7x7 pool; need at least 9x193x193"):
        FlaxI3D(I3DConfig(width_divisor=DIV)).init(jax.random.key(0), jnp.zeros((1, 8, 224, 224, 3)))
