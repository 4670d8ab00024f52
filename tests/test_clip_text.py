"""Parity of the Flax CLIP text encoder with transformers, strict loading, and the tokenizer loader.

Tiny random transformers `CLIPTextModel`s are saved to disk in both key
layouts (transformers 5 `save_pretrained`, unprefixed; and transformers 4 /
published SD checkpoints, `text_model.`-prefixed with the old `position_ids`
buffer), loaded with `load_text_encoder` and run on the same token ids.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from artv_jax.pretrained import load_text_encoder, load_tokenizer  # noqa: E402
from artv_jax.models.clip_text import CLIPTextConfig, CLIPTextModel, pooled_output  # noqa: E402
from artv_jax.weights import WeightMappingError, flax_path_to_torch_key  # noqa: E402
from helpers import REPO, write_sd_tokenizer  # noqa: E402


# name -> (transformers config kwargs, key layout of the saved file)
CONFIGS = {
    "quick_gelu-2L-4H-t5keys": (
        dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=16, hidden_act="quick_gelu"), "t5"),
    "gelu-3L-2H-t4keys+position_ids": (
        dict(vocab_size=64, hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
             max_position_embeddings=12, hidden_act="gelu", layer_norm_eps=1e-6), "t4"),
    "quick_gelu-1L-8H-legacy_eos2-t4keys+position_ids-bin": (
        dict(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=8,
             max_position_embeddings=10, hidden_act="quick_gelu", eos_token_id=2), "t4bin"),
}


def _torch_model(seed: int, **kwargs):
    """A random transformers CLIPTextModel; every parameter (norms too) is perturbed."""
    vocab = kwargs["vocab_size"]
    kwargs = {"bos_token_id": vocab - 2, "eos_token_id": vocab - 1, "pad_token_id": 1, **kwargs}
    torch.manual_seed(seed)
    model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _save(model, path: Path, layout: str) -> None:
    """Saves in transformers 5 layout ("t5"), or rewrites it to the transformers 4 layout with
    `position_ids`, as safetensors ("t4") or as a torch pickle `pytorch_model.bin` ("t4bin")."""
    model.save_pretrained(path)
    if layout in ("t4", "t4bin"):
        file = path / "model.safetensors"
        state = {"text_model." + k: v for k, v in load_file(file).items()}
        n = model.config.max_position_embeddings
        state["text_model.embeddings.position_ids"] = np.arange(n, dtype=np.int64)[None]
        if layout == "t4":
            save_file(state, file, metadata={"format": "pt"})
        else:
            os.remove(file)
            torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path / "pytorch_model.bin")


def _token_ids(config, batch: int = 3, seed: int = 0) -> np.ndarray:
    """Prompts like SD's: bos, words, eos, then eos padding; row 0 fills the context."""
    vocab, length = config.vocab_size, config.max_position_embeddings
    ids = np.random.RandomState(seed).randint(0, vocab - 2, (batch, length))
    ids[:, 0] = vocab - 2
    ids[:, -1] = vocab - 1
    for row in range(1, batch):
        ids[row, 2 + row:] = vocab - 1
    return ids


def _max_err(ours, ref) -> tuple[float, float]:
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max()), max(1.0, float(np.abs(ref).max()))


@pytest.fixture(scope="module", params=list(CONFIGS))
def saved(request, tmp_path_factory):
    """(name, torch model, directory) for each test config."""
    kwargs, layout = CONFIGS[request.param]
    model = _torch_model(seed=list(CONFIGS).index(request.param), **kwargs)
    path = tmp_path_factory.mktemp("clip") / request.param
    _save(model, path, layout)
    return request.param, model, path


# ----------------------------------------------------------------------------
# Parity.


def test_parity_float32(saved, record_property):
    name, model, path = saved
    module, params = load_text_encoder(str(path))
    ids = _token_ids(model.config)
    mask = (np.arange(ids.shape[1])[None] <= np.array([ids.shape[1], 3, 4])[:, None]).astype(np.int64)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), output_hidden_states=True)
        ref_masked = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
        penultimate = model.final_layer_norm(ref.hidden_states[-2])
    apply = jax.jit(module.apply, static_argnames="output_layer")
    ours = apply({"params": params}, jnp.asarray(ids))
    checks = {
        "last_hidden_state": (ours, ref.last_hidden_state),
        "pooled": (pooled_output(ours, jnp.asarray(ids), model.config.eos_token_id), ref.pooler_output),
        "output_layer=-2": (apply({"params": params}, jnp.asarray(ids), output_layer=-2), penultimate),
        "attention_mask": (apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)), ref_masked),
    }
    for check, (a, b) in checks.items():
        err, scale = _max_err(a, b.numpy())
        record_property(f"{check}_max_abs_err", err)
        print(f"[{name}] {check}: max abs err {err:.2e} (output scale {scale:.2f})")
        assert err <= 1e-4 * scale, f"{name} {check}: max abs err {err} > {1e-4 * scale}"
    assert ours.dtype == jnp.float32


def test_bfloat16_load(tmp_path, record_property):
    kwargs, layout = CONFIGS["quick_gelu-2L-4H-t5keys"]
    model = _torch_model(seed=1, **kwargs)
    _save(model, tmp_path, layout)
    module, params = load_text_encoder(str(tmp_path), dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    ids = _token_ids(model.config)
    ours = module.apply({"params": params}, jnp.asarray(ids))
    assert ours.dtype == jnp.bfloat16
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
    err, scale = _max_err(ours, ref)
    record_property("bf16_max_abs_err", err)
    print(f"[bf16] last_hidden_state: max abs err {err:.2e} (output scale {scale:.2f})")
    assert err <= 5e-2 * scale


def _random_module(num_layers: int = 2):
    config = CLIPTextConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=num_layers,
                            num_attention_heads=2, max_position_embeddings=8)
    module = CLIPTextModel(config)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 40, (2, 8)))
    return module, module.init(jax.random.key(0), ids)["params"], ids


def test_output_layer_indexing():
    module, params, ids = _random_module(num_layers=2)
    apply = module.apply
    last = apply({"params": params}, ids)
    np.testing.assert_array_equal(apply({"params": params}, ids, output_layer=-1), last)
    np.testing.assert_array_equal(apply({"params": params}, ids, output_layer=2), last)
    np.testing.assert_array_equal(apply({"params": params}, ids, output_layer=-3),
                                  apply({"params": params}, ids, output_layer=0))
    assert not np.allclose(apply({"params": params}, ids, output_layer=1), last)
    for bad in (3, -4):
        with pytest.raises(ValueError, match="output_layer"):
            module.apply({"params": params}, ids, output_layer=bad)


def test_bad_inputs_raise():
    module, params, ids = _random_module()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        module.apply({"params": params}, jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match="batch, length"):
        module.apply({"params": params}, ids[0])
    with pytest.raises(ValueError, match="attention_mask shape"):
        module.apply({"params": params}, ids, jnp.ones((2, 7), jnp.int32))


# ----------------------------------------------------------------------------
# Strict loading.


@pytest.mark.parametrize("layout", ["t5", "t4"])
def test_strict_loading_names_offending_keys(tmp_path, layout):
    kwargs, _ = CONFIGS["quick_gelu-2L-4H-t5keys"]
    _save(_torch_model(seed=2, **kwargs), tmp_path, layout)
    prefix = "text_model." if layout == "t4" else ""
    removed = prefix + "encoder.layers.1.mlp.fc2.bias"
    added = prefix + "encoder.layers.0.self_attn.extra.weight"
    reshaped = prefix + "final_layer_norm.weight"
    file = tmp_path / "model.safetensors"
    state = load_file(file)
    del state[removed]
    state[added] = np.zeros((3,), np.float32)
    state[reshaped] = np.zeros((33,), np.float32)
    save_file(state, file)
    with pytest.raises(WeightMappingError) as info:
        load_text_encoder(str(tmp_path))
    assert info.value.missing == [removed]
    assert info.value.unexpected == [added]
    assert info.value.misshaped == [(reshaped, (33,), (32,))]
    assert removed in str(info.value) and added in str(info.value) and reshaped in str(info.value)


def test_strict_loading_stray_unprefixed_key(tmp_path):
    kwargs, _ = CONFIGS["quick_gelu-2L-4H-t5keys"]
    _save(_torch_model(seed=3, **kwargs), tmp_path, "t4")
    file = tmp_path / "model.safetensors"
    state = load_file(file)
    state["final_layer_norm.bias"] = state["text_model.final_layer_norm.bias"]
    save_file(state, file)
    with pytest.raises(WeightMappingError) as info:
        load_text_encoder(str(tmp_path))
    assert (info.value.missing, info.value.unexpected, info.value.misshaped) == ([], ["final_layer_norm.bias"], [])


def test_safetensors_load_does_not_import_torch(tmp_path):
    kwargs, layout = CONFIGS["gelu-3L-2H-t4keys+position_ids"]
    _save(_torch_model(seed=4, **kwargs), tmp_path, layout)
    code = (
        "import sys, jax.numpy as jnp\n"
        "from artv_jax.pretrained import load_text_encoder\n"
        f"module, params = load_text_encoder({str(tmp_path)!r})\n"
        "module.apply({'params': params}, jnp.ones((1, 4), jnp.int32)).block_until_ready()\n"
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_ABSENT')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "TORCH_ABSENT" in result.stdout, result.stdout


# ----------------------------------------------------------------------------
# Config validation.


def test_config_from_dict_validates():
    base = {"model_type": "clip_text_model", "architectures": ["CLIPTextModel"], "hidden_size": 32,
            "num_attention_heads": 4, "projection_dim": 1024, "attention_dropout": 0.1, "initializer_factor": 2.0,
            "pad_token_id": 0, "dtype": "float16", "some_unknown_key": 1}
    config = CLIPTextConfig.from_dict(base)
    assert (config.hidden_size, config.num_attention_heads, config.hidden_act) == (32, 4, "quick_gelu")
    for key, value in [("hidden_act", "gelu_new"), ("architectures", ["CLIPTextModelWithProjection"]),
                       ("model_type", "clip"), ("layer_norm_eps", None), ("eos_token_id", [2, 3]),
                       ("pruned_heads", {"0": [1]})]:
        with pytest.raises(NotImplementedError, match=f"{key}="):
            CLIPTextConfig.from_dict({**base, key: value})
    with pytest.raises(ValueError, match="not a multiple"):
        CLIPTextConfig.from_dict({**base, "num_attention_heads": 5})


def test_init_param_paths_match_transformers_keys():
    """A freshly initialised tree names exactly transformers' keys (transformers 4 layout) with their shapes."""
    kwargs, _ = CONFIGS["gelu-3L-2H-t4keys+position_ids"]
    model = _torch_model(seed=5, **kwargs)
    module = CLIPTextModel(CLIPTextConfig.from_dict(model.config.to_dict()))
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]
    ours = {}
    for path, leaf in traverse_util.flatten_dict(params).items():
        key, name = flax_path_to_torch_key(path)
        ours[key] = leaf.shape[::-1] if name == "kernel" else leaf.shape
    theirs = {"text_model." + k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == theirs


# ----------------------------------------------------------------------------
# Tokenizer.


def test_tokenizer(tmp_path):
    tokenizer = load_tokenizer(str(write_sd_tokenizer(tmp_path / "tokenizer")))
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tokenizer("a photo of a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(padded) == 77 and padded[7:] == [49407] * 70


def test_tokenizer_errors(tmp_path):
    path = write_sd_tokenizer(tmp_path / "no_config", with_config=False)
    with pytest.raises(ValueError, match="model_max_length"):
        load_tokenizer(str(path))
    os.remove(path / "merges.txt")
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        load_tokenizer(str(path))
