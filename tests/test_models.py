"""Backbones: output shapes, frozen BatchNorm, bf16, the registry."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlc.models import MLP, MultiScalePoolingNet, get_backbone
from jaxmlc.models.mlp import adaptive_average_pool
from jaxmlc.models.vgg import torch_feature_index


def _shapes(model, x):
  """Output shapes without computing (cheap even for ResNet-101)."""
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       variables, x)
  return {k: v.shape for k, v in out.items()}, variables


def _init(model, x):
  """Variables with the model's shapes, filled by numpy.

  Compiling the real initialisers costs more CPU than the rest of a test;
  test_resnet_tiny_init runs them once.
  """
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = np.prod(leaf.shape[:-1])
      return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape),
                         leaf.dtype)
    return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0,
                    leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _apply(model, variables, x, train=False, seed=None):
  """Outputs (and with train the updated batch_stats too)."""
  rngs = {"dropout": jax.random.key(seed)} if seed is not None else {}
  return model.apply(variables, x, train=train, rngs=rngs,
                     mutable=["batch_stats"] if train else False)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50",
                                  "resnet101", "resnet_tiny"])
@pytest.mark.parametrize("size", [(64, 64), (72, 40)])
def test_resnet_shapes_match_out_channels(name, size):
  model = get_backbone(name)
  shapes, variables = _shapes(model, jax.ShapeDtypeStruct((2, *size, 3),
                                                          jnp.float32))
  assert list(variables["params"]) == ["layer1", "layer2", "layer3",
                                       "layer4", "stem"]
  h, w = size
  strides = {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
  for stage, channels in model.out_channels.items():
    # torch rounds odd sizes up at every stride-2 step.
    expected_h, expected_w = h, w
    for _ in range(int(np.log2(strides[stage]))):
      expected_h, expected_w = -(-expected_h // 2), -(-expected_w // 2)
    assert shapes[stage] == (2, expected_h, expected_w, channels), stage


def test_resnet_parameter_counts_match_torchvision():
  # torchvision's totals minus the 1000-way fc (512*1000+1000, 2048*1000+1000).
  expected = {"resnet18": 11_689_512 - 513_000,
              "resnet50": 25_557_032 - 2_049_000,
              "resnet101": 44_549_160 - 2_049_000}
  for name, count in expected.items():
    _, variables = _shapes(get_backbone(name),
                           jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    total = sum(np.prod(p.shape) for p in jax.tree.leaves(variables["params"]))
    assert total == count, name


def test_resnet_tiny_init_runs_and_trains_batch_stats():
  model = get_backbone("resnet_tiny")
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = jax.jit(
      lambda x: model.init(jax.random.key(0), x, train=False))(x)
  assert set(variables) == {"params", "batch_stats"}
  out = _apply(model, variables, x)
  assert out["layer4"].shape == (2, 1, 1, 128)
  assert out["stem"].shape == (2, 8, 8, 16)
  _, updates = _apply(model, variables, x, train=True)
  for stage in ("stem", "layer4"):
    before = jax.tree.leaves(variables["batch_stats"][stage])
    after = jax.tree.leaves(updates["batch_stats"][stage])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def _random_batch_stats(variables, seed=0):
  """Non-trivial running statistics so running vs batch stats differ."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key == "mean":
      return jnp.asarray(rng.normal(0, 0.2, leaf.shape), leaf.dtype)
    return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
  stats = jax.tree_util.tree_map_with_path(fill, variables["batch_stats"])
  return {**variables, "batch_stats": stats}


def test_frozen_stages_use_running_statistics():
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  frozen = ("stem", "layer1")
  model = get_backbone("resnet_tiny", frozen_stages=list(frozen))
  assert model.frozen_stages == frozen  # lists become tuples
  variables = _random_batch_stats(_init(model, x))
  eval_out = _apply(model, variables, x)
  train_out, updates = _apply(model, variables, x, train=True)
  for stage in frozen:
    np.testing.assert_allclose(train_out[stage], eval_out[stage], atol=1e-6)
    for a, b in zip(jax.tree.leaves(variables["batch_stats"][stage]),
                    jax.tree.leaves(updates["batch_stats"][stage])):
      np.testing.assert_array_equal(a, b)
  assert not np.allclose(train_out["layer2"], eval_out["layer2"], atol=1e-3)
  changed = [not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(variables["batch_stats"]["layer2"]),
      jax.tree.leaves(updates["batch_stats"]["layer2"]))]
  assert any(changed)

  # Everything frozen: training forward == eval forward.
  all_frozen = get_backbone("resnet_tiny", frozen_stages=(
      "stem", "layer1", "layer2", "layer3", "layer4"))
  out, _ = _apply(all_frozen, variables, x, train=True)
  np.testing.assert_allclose(out["layer4"], eval_out["layer4"], atol=1e-5)


def test_unknown_frozen_stage_is_refused():
  model = get_backbone("resnet_tiny", frozen_stages=("layer5",))
  with pytest.raises(ValueError, match="layer5.*stem"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)


def test_bfloat16_compute_keeps_float32_params():
  model = get_backbone("resnet_tiny", dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = _init(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  out, _ = _apply(model, variables, x, train=True)
  assert out["layer4"].dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(out["layer4"], np.float32)).all()
  reference = _apply(get_backbone("resnet_tiny"), variables, x)
  low = _apply(model, variables, x)
  np.testing.assert_allclose(np.asarray(low["layer4"], np.float32),
                             reference["layer4"], atol=0.1, rtol=0.1)


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn"])
def test_vgg_shapes(name):
  model = get_backbone(name, width=8, fc_features=32)
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = _init(model, x)
  out = _apply(model, variables, x)
  assert {k: v.shape for k, v in out.items()} == {
      "conv7": (2, 16, 16, 32), "conv10": (2, 8, 8, 64),
      "conv13": (2, 4, 4, 64), "pool5": (2, 2, 2, 64), "fc7": (2, 32)}
  assert model.out_channels == {k: v.shape[-1] for k, v in out.items()}
  assert ("bn13" in variables["params"]["block5"]) == name.endswith("_bn")
  assert (np.asarray(out["conv7"]) >= 0).all()  # after ReLU
  # Dropout is active when training.
  train_out = _apply(model, variables, x, train=True, seed=2)[0]
  assert (np.asarray(train_out["fc7"]) == 0).mean() > 0.3


def test_vgg_full_size_shapes_and_torch_indices():
  shapes, variables = _shapes(get_backbone("vgg16"), jax.ShapeDtypeStruct(
      (1, 224, 224, 3), jnp.float32))
  assert shapes == {"conv7": (1, 56, 56, 256), "conv10": (1, 28, 28, 512),
                    "conv13": (1, 14, 14, 512), "pool5": (1, 7, 7, 512),
                    "fc7": (1, 4096)}
  assert variables["params"]["fc6"]["kernel"].shape == (25088, 4096)
  assert [torch_feature_index(k, False) for k in (1, 7, 13)] == [0, 14, 28]
  assert [torch_feature_index(k, True) for k in (1, 7, 13)] == [0, 20, 40]


def test_vgg_frozen_blocks_use_running_statistics():
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  model = get_backbone("vgg16_bn", width=8, include_fc=False,
                       frozen_stages=("block1", "block2", "block3"))
  variables = _random_batch_stats(_init(model, x))
  eval_out = _apply(model, variables, x)
  train_out, updates = _apply(model, variables, x, train=True)
  np.testing.assert_allclose(train_out["conv7"], eval_out["conv7"], atol=1e-5)
  frozen_var = lambda v: v["batch_stats"]["block3"]["bn7"]["var"]
  np.testing.assert_array_equal(frozen_var(updates), frozen_var(variables))
  assert not np.allclose(train_out["conv10"], eval_out["conv10"], atol=1e-3)
  with pytest.raises(ValueError, match="layer4.*block1"):
    _init(get_backbone("vgg16", frozen_stages=("layer4",)), x)


def test_vgg_without_fc():
  model = get_backbone("vgg16", width=8, include_fc=False)
  shapes, variables = _shapes(model, jax.ShapeDtypeStruct((1, 32, 32, 3),
                                                          jnp.float32))
  assert "fc7" not in shapes and "fc6" not in variables["params"]


def _torch_adaptive_pool_reference(x, bins):
  """torch's adaptive_avg_pool1d, one bin at a time."""
  length = x.shape[-1]
  return np.stack([x[..., int(np.floor(i * length / bins)):
                      int(np.ceil((i + 1) * length / bins))].mean(-1)
                   for i in range(bins)], -1)


@pytest.mark.parametrize("length", [3, 7, 100, 139, 1386])
def test_adaptive_average_pool_matches_torch_bins(length):
  x = np.random.default_rng(0).normal(size=(2, length)).astype(np.float32)
  for bins in (1, 4, 9, 25, 100):
    np.testing.assert_allclose(adaptive_average_pool(jnp.asarray(x), bins, -1),
                               _torch_adaptive_pool_reference(x, bins),
                               atol=1e-5)


def test_multi_scale_pooling_net():
  model = MultiScalePoolingNet(hidden=32, features=8)
  x = jnp.ones((3, 1386))
  variables = model.init(jax.random.key(0), x)
  assert variables["params"]["hidden"]["kernel"].shape == (139, 32)
  assert model.apply(variables, x).shape == (3, 8)


def test_mlp():
  model = MLP((16, 8, 4), dropout=0.5)
  x = jnp.ones((5, 10))
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (5, 4)
  a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  np.testing.assert_raises(AssertionError, np.testing.assert_allclose, a,
                           model.apply(variables, x))


@pytest.mark.parametrize("frames", [20, 5])
def test_snet(frames):
  model = get_backbone("snet", features=[8, 8, 16, 16])
  x = jax.random.normal(jax.random.key(1), (2, frames, 12))
  variables = _init(model, x)
  out, _ = _apply(model, variables, x, train=True)
  steps = frames
  for i, channels in enumerate((8, 8, 16, 16), start=1):
    steps = -(-steps // 2)
    assert out[f"block{i}"].shape == (2, steps, channels)
  assert model.out_channels["block4"] == 16


def test_alexnet8():
  model = get_backbone("alexnet8", conv_features=(8, 8, 16, 16, 8),
                       dense_features=(32, 16))
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = _init(model, x)
  out = _apply(model, variables, x)
  assert out["conv5"].shape == (2, 2, 2, 8)
  assert out["embedding"].shape == (2, 16)
  assert model.out_channels == {"conv5": 8, "embedding": 16}
  shapes, _ = _shapes(get_backbone("alexnet8"), jax.ShapeDtypeStruct(
      (1, 224, 224, 3), jnp.float32))
  assert shapes == {"conv5": (1, 7, 7, 256), "embedding": (1, 4096)}


def test_registry_errors():
  with pytest.raises(ValueError, match="'resnet50'.*resnet18, resnet34"):
    get_backbone("resnet5O")
  with pytest.raises(ValueError, match="Known backbones"):
    get_backbone("efficientnet")
  with pytest.raises(ValueError, match="frozen_stages"):
    get_backbone("alexnet8", frozen_stages=("stem",))
  with pytest.raises(ValueError, match="depth 42"):
    get_backbone("resnet18", depth=42).out_channels  # noqa: B018
  model = get_backbone("resnet50", width=8, name="backbone")
  assert model.name == "backbone" and model.out_channels["layer4"] == 256


@pytest.mark.parametrize("size, stride", [(2, 1), (2, 2), (3, 2), (1, 1),
                                          (5, 1)])
def test_small_output_conv_equals_nn_conv(size, stride):
  """The im2col path (outputs smaller than the kernel) and nn.Conv: same
  parameters, same outputs and input gradients."""
  from jaxmlc.models.resnet import SmallOutputConv
  x = jax.random.normal(jax.random.PRNGKey(0), (3, size, size, 6))
  args = dict(features=5, kernel_size=(3, 3), strides=(stride, stride),
              padding=((1, 1), (1, 1)), use_bias=False)
  plain, small = nn.Conv(**args), SmallOutputConv(**args)
  variables = plain.init(jax.random.PRNGKey(1), x)
  assert (jax.tree.map(jnp.shape, small.init(jax.random.PRNGKey(1), x))
          == jax.tree.map(jnp.shape, variables))
  np.testing.assert_allclose(small.apply(variables, x),
                             plain.apply(variables, x), atol=1e-5)
  grad = lambda m: jax.grad(lambda v: jnp.sum(m.apply(variables, v) ** 2))(x)
  np.testing.assert_allclose(grad(small), grad(plain), atol=1e-4)
