"""Pretrained-weight conversion against an independent numpy forward pass.

State dicts are random values under torchvision's exact key names. ResNet-18
uses torchvision's exact shapes; ResNet-50 (bottlenecks) and VGG-16 use a
reduced width (all torchvision shapes divided alike) to stay fast: the key
names and layouts, which are what conversion touches, are torchvision's.
The reference below is written from torch's definitions (NCHW, OIHW) and
shares no code with the Flax models.
"""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxmlc.models import get_backbone
from jaxmlc.models import pretrained

TOLERANCE = 1e-4
VGG_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"]


# --------------------------------------------------- torchvision state dicts

class _Random:
  def __init__(self, seed):
    self.rng = np.random.default_rng(seed)
    self.state = {}

  def conv(self, key, out, inp, k, bias=False):
    std = np.sqrt(2.0 / (inp * k * k))  # keeps activations O(1)
    self.state[f"{key}.weight"] = self.rng.normal(0, std, (out, inp, k, k))
    if bias:
      self.state[f"{key}.bias"] = self.rng.normal(0, 0.1, out)

  def bn(self, key, n):
    self.state[f"{key}.weight"] = self.rng.uniform(0.5, 1.0, n)
    self.state[f"{key}.bias"] = self.rng.normal(0, 0.1, n)
    self.state[f"{key}.running_mean"] = self.rng.normal(0, 0.2, n)
    self.state[f"{key}.running_var"] = self.rng.uniform(0.5, 2.0, n)
    self.state[f"{key}.num_batches_tracked"] = np.array(7)

  def linear(self, key, out, inp):
    self.state[f"{key}.weight"] = self.rng.normal(0, np.sqrt(2 / inp),
                                                  (out, inp))
    self.state[f"{key}.bias"] = self.rng.normal(0, 0.1, out)

  def done(self):
    return {k: v.astype(np.float32) for k, v in self.state.items()}


def resnet_state_dict(blocks, bottleneck, width=64, seed=0):
  """torchvision.models.resnet's state_dict() keys and shapes."""
  r = _Random(seed)
  r.conv("conv1", width, 3, 7)
  r.bn("bn1", width)
  inplanes, expansion = width, 4 if bottleneck else 1
  for i, count in enumerate(blocks):
    planes = width * 2**i
    for j in range(count):
      p = f"layer{i + 1}.{j}"
      if bottleneck:
        r.conv(f"{p}.conv1", planes, inplanes, 1)
        r.bn(f"{p}.bn1", planes)
        r.conv(f"{p}.conv2", planes, planes, 3)
        r.bn(f"{p}.bn2", planes)
        r.conv(f"{p}.conv3", planes * 4, planes, 1)
        r.bn(f"{p}.bn3", planes * 4)
      else:
        r.conv(f"{p}.conv1", planes, inplanes, 3)
        r.bn(f"{p}.bn1", planes)
        r.conv(f"{p}.conv2", planes, planes, 3)
        r.bn(f"{p}.bn2", planes)
      stride = 2 if i > 0 and j == 0 else 1
      if j == 0 and (stride != 1 or inplanes != planes * expansion):
        r.conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
        r.bn(f"{p}.downsample.1", planes * expansion)
      inplanes = planes * expansion
  r.linear("fc", 1000, inplanes)
  return r.done()


def vgg_state_dict(batch_norm, divide, fc, seed=0):
  """torchvision.models.vgg16(_bn)'s keys; widths divided by `divide`."""
  r = _Random(seed)
  index, inp = 0, 3
  for item in VGG_LAYOUT:
    if item == "M":
      index += 1
      continue
    r.conv(f"features.{index}", item // divide, inp, 3, bias=True)
    if batch_norm:
      r.bn(f"features.{index + 1}", item // divide)
    inp = item // divide
    index += 3 if batch_norm else 2
  r.linear("classifier.0", fc, inp * 49)
  r.linear("classifier.3", fc, fc)
  r.linear("classifier.6", 1000, fc)
  return r.done()


# ------------------------------------------------ numpy reference (torch)

def conv2d(x, w, stride=1, padding=0, bias=None):
  """torch.nn.functional.conv2d: x [B, C, H, W], w [O, C, kh, kw]."""
  _, _, h, wd = x.shape
  _, _, kh, kw = w.shape
  x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  ho = (h + 2 * padding - kh) // stride + 1
  wo = (wd + 2 * padding - kw) // stride + 1
  out = 0
  for i in range(kh):
    for j in range(kw):
      patch = x[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
      out = out + np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
  return out if bias is None else out + bias[None, :, None, None]


def batch_norm(x, sd, key, eps=1e-5):
  scale = sd[f"{key}.weight"] / np.sqrt(sd[f"{key}.running_var"] + eps)
  shift = sd[f"{key}.bias"] - sd[f"{key}.running_mean"] * scale
  return x * scale[None, :, None, None] + shift[None, :, None, None]


def relu(x):
  return np.maximum(x, 0)


def max_pool(x, k, stride, padding=0):
  x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)),
             constant_values=-np.inf)
  ho = (x.shape[2] - k) // stride + 1
  wo = (x.shape[3] - k) // stride + 1
  windows = [x[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
             for i in range(k) for j in range(k)]
  return np.max(windows, axis=0)


def adaptive_avg_pool2d(x, size):
  h, w = x.shape[2:]
  rows = []
  for i in range(size):
    r0, r1 = (i * h) // size, -(-((i + 1) * h) // size)
    rows.append([x[:, :, r0:r1, (j * w) // size:-(-((j + 1) * w) // size)]
                 .mean(axis=(2, 3)) for j in range(size)])
  return np.array(rows).transpose(2, 3, 0, 1)  # [B, C, size, size]


def resnet_reference(sd, x):
  """torchvision ResNet.forward up to layer4, returning every stage."""
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  out = {}
  x = relu(batch_norm(conv2d(x, sd["conv1.weight"], 2, 3), sd, "bn1"))
  x = out["stem"] = max_pool(x, 3, 2, 1)
  bottleneck = "layer1.0.conv3.weight" in sd
  for i in range(1, 5):
    j = 0
    while f"layer{i}.{j}.conv1.weight" in sd:
      p = f"layer{i}.{j}"
      stride = 2 if i > 1 and j == 0 else 1
      if bottleneck:
        y = relu(batch_norm(conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
        y = relu(batch_norm(conv2d(y, sd[f"{p}.conv2.weight"], stride, 1), sd,
                            f"{p}.bn2"))
        y = batch_norm(conv2d(y, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
      else:
        y = relu(batch_norm(conv2d(x, sd[f"{p}.conv1.weight"], stride, 1), sd,
                            f"{p}.bn1"))
        y = batch_norm(conv2d(y, sd[f"{p}.conv2.weight"], 1, 1), sd,
                       f"{p}.bn2")
      if f"{p}.downsample.0.weight" in sd:
        x = batch_norm(conv2d(x, sd[f"{p}.downsample.0.weight"], stride), sd,
                       f"{p}.downsample.1")
      x = relu(y + x)
      j += 1
    out[f"layer{i}"] = x
  return out


def vgg_reference(sd, x, batch_norm_layers):
  """torchvision VGG.forward up to classifier.5 (eval: dropout is identity)."""
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  out, index, conv = {}, 0, 0
  for item in VGG_LAYOUT:
    if item == "M":
      x = max_pool(x, 2, 2)
      index += 1
      continue
    conv += 1
    x = conv2d(x, sd[f"features.{index}.weight"], 1, 1,
               sd[f"features.{index}.bias"])
    if batch_norm_layers:
      x = batch_norm(x, sd, f"features.{index + 1}")
    x = relu(x)
    if conv in (7, 10, 13):
      out[f"conv{conv}"] = x
    index += 3 if batch_norm_layers else 2
  out["pool5"] = x
  x = adaptive_avg_pool2d(x, 7).reshape(x.shape[0], -1)
  for layer in ("classifier.0", "classifier.3"):
    x = relu(x @ sd[f"{layer}.weight"].T + sd[f"{layer}.bias"])
  out["fc7"] = x
  return out


# ------------------------------------------------------------------ helpers

def _save(sd, path):
  path = str(path)
  if path.endswith(".safetensors"):
    save_file(sd, path)
  else:
    np.savez(path, **sd)
  return path


def _compare(model, variables, sd_reference, x_nchw):
  """Max abs difference between the Flax model and the reference, per key."""
  x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1), jnp.float32)
  ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  diffs = {}
  for key, expected in sd_reference.items():
    got = np.asarray(ours[key], np.float64)
    if expected.ndim == 4:
      expected = expected.transpose(0, 2, 3, 1)
    assert got.shape == expected.shape, key
    assert np.abs(expected).max() > 0.1, f"{key} is degenerate"
    diffs[key] = float(np.abs(got - expected).max())
  return diffs


def _abstract_variables(model):
  """Shapes only: all load_into needs from the variables it fills."""
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))


def _image(seed=1, size=32):
  return np.random.default_rng(seed).normal(size=(1, 3, size, size))


# -------------------------------------------------------------------- tests

@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_resnet18_matches_reference(tmp_path, suffix):
  sd = resnet_state_dict((2, 2, 2, 2), bottleneck=False)
  path = _save(sd, tmp_path / f"resnet18{suffix}")
  assert pretrained.infer_arch(sd) == ("resnet18", {"width": 64})
  variables = pretrained.convert(path)
  x = _image()
  diffs = _compare(get_backbone("resnet18"), variables, resnet_reference(sd, x),
                   x)
  print("resnet18 max abs diff", diffs)
  assert max(diffs.values()) < TOLERANCE, diffs


def test_resnet50_bottleneck_matches_reference(tmp_path):
  sd = resnet_state_dict((3, 4, 6, 3), bottleneck=True, width=16)
  path = _save(sd, tmp_path / "resnet50_w16.safetensors")
  variables = pretrained.convert(path, "resnet50", width=16)
  x = _image(size=40)  # odd sizes after stride 2 exercise torch's padding
  diffs = _compare(get_backbone("resnet50", width=16), variables,
                   resnet_reference(sd, x), x)
  print("resnet50/16 max abs diff", diffs)
  assert max(diffs.values()) < TOLERANCE, diffs


@pytest.mark.parametrize("name,suffix", [("vgg16_bn", ".safetensors"),
                                         ("vgg16", ".npz")])
def test_vgg16_matches_reference(tmp_path, name, suffix):
  batch_norm_layers = name.endswith("_bn")
  sd = vgg_state_dict(batch_norm_layers, divide=8, fc=64)
  path = _save(sd, tmp_path / f"{name}{suffix}")
  assert pretrained.infer_arch(sd) == (name, {"width": 8, "fc_features": 64})
  variables = pretrained.convert(path)
  x = _image(size=64)  # pool5 2x2 -> adaptive 7x7 replicates, as torch
  model = get_backbone(name, width=8, fc_features=64)
  diffs = _compare(model, variables, vgg_reference(sd, x, batch_norm_layers),
                   x)
  print(f"{name}/8 max abs diff", diffs)
  assert max(diffs.values()) < TOLERANCE, diffs


def test_load_into_nested_variables_and_converted_file(tmp_path):
  sd = resnet_state_dict((1, 1, 1, 1), bottleneck=False, width=16)
  path = _save(sd, tmp_path / "tiny.npz")
  backbone = _abstract_variables(get_backbone("resnet_tiny"))
  head = {"kernel": jnp.ones((128, 5))}
  variables = {"params": {"backbone": backbone["params"], "head": head},
               "batch_stats": {"backbone": backbone["batch_stats"]},
               "state": {"step": jnp.zeros(())}}
  loaded = pretrained.load_into(variables, path, prefix=("backbone",))
  assert loaded["params"]["head"] is head
  assert loaded["state"] is variables["state"]
  np.testing.assert_array_equal(
      loaded["params"]["backbone"]["stem"]["conv"]["kernel"],
      sd["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      loaded["batch_stats"]["backbone"]["layer2"]["block0"]["downsample_bn"][
          "var"], sd["layer2.0.downsample.1.running_var"])

  converted = str(tmp_path / "tiny.msgpack")
  pretrained.save_converted(pretrained.convert(path), converted, "resnet_tiny")
  again = pretrained.load_into(variables, converted)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)

  wrong = {"params": {"backbone": _abstract_variables(
      get_backbone("resnet18", width=8))["params"]}}
  with pytest.raises(ValueError, match=r"params/layer1/block0/bn1/bias: "
                     r"expected shape \(8,\), found \(16,\)"):
    pretrained.load_into(wrong, converted)
  with pytest.raises(ValueError, match="no 'encoder'.*backbone"):
    pretrained.load_into(variables, path, prefix=("encoder",))
  with pytest.raises(ValueError, match="not part of a resnet backbone"):
    pretrained.load_into(variables, path, prefix=())


def test_mismatched_files_are_refused(tmp_path):
  sd = resnet_state_dict((1, 1, 1, 1), bottleneck=False, width=16)
  bad_shape = dict(sd)
  bad_shape["layer1.0.conv2.weight"] = np.zeros((16, 16, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"layer1\.0\.conv2\.weight: expected "
                     r"shape \(16, 16, 3, 3\), found \(16, 16, 1, 1\)"):
    pretrained.convert(_save(bad_shape, tmp_path / "shape.safetensors"))
  missing = {k: v for k, v in sd.items() if k != "layer4.0.bn2.running_var"}
  with pytest.raises(ValueError, match=r"layer4\.0\.bn2\.running_var: missing"):
    pretrained.convert(_save(missing, tmp_path / "missing.npz"))
  # A ResNet-18 file for a ResNet-34 model: names the missing blocks and
  # says what the file is.
  sd18 = resnet_state_dict((2, 2, 2, 2), bottleneck=False, width=8)
  with pytest.raises(ValueError, match=r"(?s)layer1\.2\..*missing.*"
                     r"looks like resnet18"):
    pretrained.convert(_save(sd18, tmp_path / "r18.npz"), "resnet34", width=8)
  extra = dict(sd, **{"layer5.0.conv1.weight": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"layer5\.0\.conv1\.weight: in the "
                     "file but not in the model"):
    pretrained.convert(_save(extra, tmp_path / "extra.npz"))
  with pytest.raises(ValueError, match="Cannot tell the architecture"):
    pretrained.convert(_save({"w": np.zeros(2, np.float32)},
                             tmp_path / "other.npz"))
  with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
    pretrained.convert(str(tmp_path / "absent.safetensors"))
  unknown_format = tmp_path / "weights.ckpt"
  unknown_format.write_bytes(b"")
  with pytest.raises(ValueError, match=r"expected one of.*\.safetensors"):
    pretrained.convert(str(unknown_format))


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None,
                    reason="torch is installed")
def test_pth_without_torch_says_how_to_install(tmp_path):
  path = tmp_path / "resnet18.pth"
  path.write_bytes(b"not read")
  with pytest.raises(ImportError, match=r"pip install jaxmlc\[torch\]"):
    pretrained.convert(str(path))


def test_convert_weights_cli(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location(
      "convert_weights",
      pathlib.Path(__file__).parents[1] / "launch" / "convert_weights.py")
  cli = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cli)
  sd = resnet_state_dict((1, 1, 1, 1), bottleneck=False, width=16)
  source = _save(sd, tmp_path / "tiny.safetensors")
  out = str(tmp_path / "tiny.msgpack")
  assert cli.main([source, out]) == 0
  assert "resnet_tiny" in capsys.readouterr().out
  variables = pretrained.load_converted(out)
  np.testing.assert_array_equal(variables["params"]["layer3"]["block0"][
      "conv1"]["kernel"], sd["layer3.0.conv1.weight"].transpose(2, 3, 1, 0))
  assert cli.main([source, out, "--arch", "resnet18"]) == 2
  assert "does not match" in capsys.readouterr().err


def test_vgg_timm_names_and_conv_only_model(tmp_path):
  sd = vgg_state_dict(batch_norm=False, divide=8, fc=64)
  reference = pretrained.convert(_save(sd, tmp_path / "tv.npz"))
  # timm's VGG keeps `features.*` but runs fc6/fc7 as convs (pre_logits)
  # over the 7x7 map and calls the classifier `head.fc`.
  timm = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
  timm["pre_logits.fc1.weight"] = sd["classifier.0.weight"].reshape(64, 64,
                                                                    7, 7)
  timm["pre_logits.fc1.bias"] = sd["classifier.0.bias"]
  timm["pre_logits.fc2.weight"] = sd["classifier.3.weight"][:, :, None, None]
  timm["pre_logits.fc2.bias"] = sd["classifier.3.bias"]
  timm["head.fc.weight"] = sd["classifier.6.weight"]
  timm["head.fc.bias"] = sd["classifier.6.bias"]
  converted = pretrained.convert(_save(timm, tmp_path / "timm.npz"))
  for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)
  # A model without fc6/fc7 takes the same file and ignores the classifier.
  conv_only = pretrained.convert(str(tmp_path / "tv.npz"), "vgg16",
                                 width=8, include_fc=False)
  assert "fc6" not in conv_only["params"] and conv_only["batch_stats"] == {}
