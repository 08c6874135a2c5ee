"""Backbone weights from local torchvision/timm files; nothing is downloaded.

Accepted files:
  - a torchvision/timm ResNet or VGG-16 state dict with torch key names:
    `.safetensors` or `.npz` (no torch needed), `.pth`/`.pt`/`.bin` (needs
    the optional extra: `pip install jaxmlc[torch]`);
  - a converted file written by `save_converted` (`.msgpack`), e.g. by
    `python launch/convert_weights.py IN OUT`.

Layouts: conv OIHW -> HWIO, Linear (out, in) -> (in, out), BN weight/bias ->
params scale/bias, running_mean/var -> batch_stats mean/var. The ImageNet
classifier (ResNet `fc.*`, VGG `classifier.6.*`, timm `head.*`) is ignored;
VGG `classifier.0/3` (timm `pre_logits.fc1/fc2`) become fc6/fc7 when the
model has them. Any other missing, unexpected or mis-shaped key refuses the
file, naming the first mismatches.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxmlc.models import get_backbone
from jaxmlc.models.vgg import torch_feature_index

StateDict = dict[str, np.ndarray]
Variables = dict[str, Any]

STATE_DICT_SUFFIXES = (".safetensors", ".npz", ".pth", ".pt", ".bin")
CONVERTED_SUFFIX = ".msgpack"
_FORMAT = "jaxmlc-backbone-v1"
_SHOWN_MISMATCHES = 5
# depth by (blocks per stage, bottleneck?) as torchvision builds them.
_RESNET_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34,
                  ((3, 4, 6, 3), True): 50, ((3, 4, 23, 3), True): 101,
                  ((1, 1, 1, 1), False): 10}


# ------------------------------------------------------------------ reading

def read_state_dict(path: str) -> StateDict:
  """{torch key: float32 array} from .safetensors / .npz / .pth."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Pretrained weights file {path!r} does not "
                            "exist. Nothing is downloaded: fetch the "
                            "torchvision/timm weights on a machine with "
                            "internet and copy the file here.")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".safetensors":
    from safetensors.numpy import load_file
    try:
      raw = load_file(path)
    except (TypeError, ValueError) as e:  # e.g. bf16, which numpy lacks
      raise ValueError(f"Could not read {path!r} with safetensors.numpy "
                       f"({e}). Save the state dict in float32.") from e
  elif suffix == ".npz":
    with np.load(path, allow_pickle=False) as data:
      raw = {k: data[k] for k in data.files}
  elif suffix in (".pth", ".pt", ".bin"):
    raw = _read_torch(path)
  else:
    raise ValueError(f"Cannot read weights from {path!r}: expected one of "
                     f"{STATE_DICT_SUFFIXES} (a torch state dict) or "
                     f"{CONVERTED_SUFFIX} (converted by "
                     "launch/convert_weights.py).")
  # DataParallel/DDP checkpoints prefix every key with "module.".
  return {k.removeprefix("module."): np.asarray(v, np.float32)
          for k, v in raw.items()}


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"Reading {path!r} needs PyTorch, which is not "
                      "installed. Either `pip install jaxmlc[torch]`, or "
                      "save the state dict as .safetensors/.npz on a machine "
                      "with torch (safetensors.torch.save_file(state_dict, "
                      "'weights.safetensors')).") from e
  obj = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("state_dict", "model", "model_state_dict"):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]  # training checkpoints wrap the weights
  return {k: v.detach().float().numpy() for k, v in obj.items()
          if hasattr(v, "detach")}


def infer_arch(state_dict: Mapping[str, np.ndarray]) -> tuple[str, dict]:
  """(registry name, model kwargs) that fit a torch state dict's keys."""
  keys = set(state_dict)
  if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
    blocks = tuple(
        len({k.split(".")[1] for k in keys if k.startswith(f"layer{i}.")})
        for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in keys
    depth = _RESNET_DEPTHS.get((blocks, bottleneck))
    if depth is None:
      raise ValueError(f"The state dict is a ResNet with {blocks} blocks per "
                       f"stage (bottleneck={bottleneck}); supported: "
                       "ResNet-18/34/50/101.")
    name = "resnet_tiny" if depth == 10 else f"resnet{depth}"
    return name, {"width": int(state_dict["conv1.weight"].shape[0])}
  if "features.0.weight" in keys:
    convs = [k for k in keys
             if k.startswith("features.") and k.endswith(".weight")
             and state_dict[k].ndim == 4]
    if len(convs) != 13:
      raise ValueError(f"The state dict is a VGG with {len(convs)} convs; "
                       "only VGG-16 (13 convs) is supported.")
    batch_norm = "features.1.running_mean" in keys
    kwargs = {"width": int(state_dict["features.0.weight"].shape[0])}
    for fc6 in ("classifier.0.weight", "pre_logits.fc1.weight"):
      if fc6 in keys:
        kwargs["fc_features"] = int(state_dict[fc6].shape[0])
    return ("vgg16_bn" if batch_norm else "vgg16"), kwargs
  raise ValueError("Cannot tell the architecture from the state dict's keys "
                   f"(first: {sorted(keys)[:5]}); expected torchvision/timm "
                   "ResNet ('conv1.weight', 'layer1.0.conv1.weight', ...) or "
                   "VGG-16 ('features.0.weight', ...).")


# -------------------------------------------------------------- name mapping

def _family(arch: str | None, state_dict: Mapping[str, Any]) -> str:
  arch = arch or infer_arch(state_dict)[0]
  for family in ("resnet", "vgg"):
    if arch.startswith(family):
      return family
  raise ValueError(f"No pretrained weights mapping for backbone {arch!r}; "
                   "only ResNet and VGG-16 weights convert.")


def _torch_module(family: str, path: tuple[str, ...],
                  batch_norm: bool) -> list[str]:
  """Candidate torch module names of a Flax module path (torchvision, timm)."""
  if family == "resnet":
    if path[0] == "stem":
      return [{"conv": "conv1", "bn": "bn1"}[path[1]]]
    layer, block, module = path
    module = {"downsample_conv": "downsample.0",
              "downsample_bn": "downsample.1"}.get(module, module)
    return [f"{layer}.{block.removeprefix('block')}.{module}"]
  module = path[-1]  # VGG: block{b}/conv{k}, block{b}/bn{k}, fc6, fc7
  if module.startswith("conv"):
    return [f"features.{torch_feature_index(int(module[4:]), batch_norm)}"]
  if module.startswith("bn"):
    return [f"features.{torch_feature_index(int(module[2:]), batch_norm) + 1}"]
  return {"fc6": ["classifier.0", "pre_logits.fc1"],
          "fc7": ["classifier.3", "pre_logits.fc2"]}[module]


_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "bias"): "bias",
               ("params", "scale"): "weight",
               ("batch_stats", "mean"): "running_mean",
               ("batch_stats", "var"): "running_var"}


def _ignored(family: str, key: str, has_fc: bool) -> bool:
  if key.endswith("num_batches_tracked"):
    return True
  if family == "resnet":
    return key.startswith("fc.")
  head = key.startswith(("classifier.6.", "head."))
  fc = key.startswith(("classifier.0.", "classifier.3.", "pre_logits."))
  return head or (fc and not has_fc)


def _to_flax(value: np.ndarray, flax_ndim: int) -> np.ndarray:
  if value.ndim == 4 and flax_ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if value.ndim == 3 and flax_ndim == 3:
    return value.transpose(2, 1, 0)  # OIK -> KIO
  if value.ndim == 4 and flax_ndim == 2:
    # timm's VGG pre_logits are convs over the 7x7 map == Linear on the
    # (C, H, W)-ordered flatten our VGG uses.
    return value.reshape(value.shape[0], -1).T
  if value.ndim == 2 and flax_ndim == 2:
    return value.T  # Linear (out, in) -> Dense (in, out)
  return value


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch layout of a Flax shape, for error messages."""
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if len(flax_shape) in (2, 3):
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def _from_state_dict(state_dict: StateDict, expected: Mapping[str, Any],
                     family: str, source: str, target: str,
                     suggest_arch: bool = True) -> Variables:
  """Map a torch state dict onto `expected` ({"params", "batch_stats"} of
  arrays or ShapeDtypeStructs); refuses any mismatch (with the
  architecture the keys suggest, when `suggest_arch`)."""
  params = expected.get("params") or {}
  batch_norm = family == "vgg" and any(
      name.startswith("bn") for path in traverse_util.flatten_dict(
          dict(params)) for name in path)
  has_fc = "fc6" in params
  converted, used, problems = {}, set(), []
  for collection in ("params", "batch_stats"):
    flat = traverse_util.flatten_dict(dict(expected.get(collection) or {}))
    out = {}
    for path, leaf in flat.items():
      leaf_name = _LEAF_NAMES.get((collection, path[-1]))
      try:
        modules = _torch_module(family, path[:-1], batch_norm)
      except (KeyError, ValueError):
        modules = None
      if leaf_name is None or modules is None:
        raise ValueError(f"{target} has a {collection} leaf "
                         f"{'/'.join(path)} that is not part of a {family} "
                         "backbone; point `prefix` at the backbone itself.")
      candidates = [f"{m}.{leaf_name}" for m in modules]
      key = next((k for k in candidates if k in state_dict), None)
      if key is None:
        problems.append(f"{candidates[0]}: missing from the file (expected "
                        f"shape {_torch_shape(leaf.shape)})")
        continue
      used.add(key)
      value = _to_flax(state_dict[key], len(leaf.shape))
      if value.shape != tuple(leaf.shape):
        problems.append(f"{key}: expected shape {_torch_shape(leaf.shape)}, "
                        f"found {state_dict[key].shape}")
        continue
      out[path] = value.astype(leaf.dtype)
    converted[collection] = traverse_util.unflatten_dict(out) if out else {}
  for key in sorted(set(state_dict) - used):
    if not _ignored(family, key, has_fc):
      problems.append(f"{key}: in the file but not in the model (shape "
                      f"{state_dict[key].shape})")
  if problems:
    _refuse(source, target, problems, state_dict if suggest_arch else None)
  return converted


def _refuse(source: str, target: str, problems: Sequence[str],
            state_dict: Mapping[str, Any] | None = None):
  shown = "\n  ".join(problems[:_SHOWN_MISMATCHES])
  more = len(problems) - _SHOWN_MISMATCHES
  more = f"\n  ... and {more} more" if more > 0 else ""
  hint = ""
  if state_dict is not None:
    try:
      arch, kwargs = infer_arch(state_dict)
      hint = (f"\nFrom its keys the file looks like {arch} {kwargs}; build "
              "the backbone to match (config.model.backbone and its width) "
              "or use weights for the configured architecture.")
    except ValueError:
      pass
  raise ValueError(f"{source} does not match {target} ({len(problems)} "
                   f"mismatch(es)):\n  {shown}{more}{hint}")


# ------------------------------------------------------------ public API

def convert(path: str, arch: str | None = None, **model_kwargs) -> Variables:
  """{"params", "batch_stats"} of `get_backbone(arch, **model_kwargs)` from a
  torch state dict file.

  With `arch=None` the architecture and width are inferred from the keys;
  with an explicit `arch`, `model_kwargs` (e.g. width) must describe the
  file or it is refused.
  """
  return convert_state_dict(read_state_dict(path), arch, source=repr(path),
                            **model_kwargs)


def convert_state_dict(state_dict: StateDict, arch: str | None = None,
                       source: str = "the state dict",
                       **model_kwargs) -> Variables:
  """`convert` for a state dict already in memory ({torch key: array})."""
  if arch is None:
    arch, inferred = infer_arch(state_dict)
    model_kwargs = {**inferred, **model_kwargs}
  model = get_backbone(arch, **model_kwargs)
  try:  # only suggest another architecture when the keys point elsewhere
    inferred_arch, inferred = infer_arch(state_dict)
    suggest = inferred_arch != arch or any(
        getattr(model, k) != v for k, v in inferred.items())
  except ValueError:
    suggest = False
  expected = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False))
  described = f"{arch} {model_kwargs}" if model_kwargs else arch
  return _from_state_dict(state_dict, expected, _family(arch, state_dict),
                          source, f"backbone {described}", suggest)


def save_converted(variables: Mapping[str, Any], out_path: str,
                   arch: str = "") -> None:
  """Write {"params", "batch_stats"} as flax msgpack (`load_converted`)."""
  tree = {"format": _FORMAT, "arch": arch,
          "params": jax.tree.map(np.asarray, dict(variables["params"])),
          "batch_stats": jax.tree.map(
              np.asarray, dict(variables.get("batch_stats", {})))}
  with open(out_path, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(tree))


def load_converted(path: str) -> Variables:
  """{"params", "batch_stats"} from a file written by `save_converted`."""
  with open(path, "rb") as f:
    tree = flax.serialization.msgpack_restore(f.read())
  if not isinstance(tree, dict) or tree.get("format") != _FORMAT:
    raise ValueError(f"{path!r} is not a converted backbone file (written by "
                     "launch/convert_weights.py).")
  return {"params": tree["params"], "batch_stats": tree["batch_stats"] or {}}


def load(path: str, arch: str | None = None, **model_kwargs) -> Variables:
  """Backbone variables from either a converted file or a torch state dict."""
  if path.endswith(CONVERTED_SUFFIX):
    return load_converted(path)
  return convert(path, arch, **model_kwargs)


def load_into(variables: Mapping[str, Any], path: str,
              prefix: Sequence[str] = ("backbone",),
              arch: str | None = None) -> Variables:
  """`variables` with the backbone at `prefix` replaced by the file's weights.

  variables: {"params": {...}, "batch_stats": {...}, ...} of a whole method
    model (arrays or ShapeDtypeStructs); the backbone sits at
    variables[collection][prefix[0]][prefix[1]]... for params and
    batch_stats. Its shapes are what the file must match.
  path: a torch state dict (.safetensors/.npz/.pth) or a converted .msgpack.
  arch: registry name, only to pick the torch naming (ResNet or VGG); when
    None it is inferred from the file's keys.
  Returns a new dict; other collections and subtrees are left as they are,
  loaded leaves take the dtype of the leaves they replace.
  """
  prefix = tuple(prefix)
  expected = {c: _subtree(variables, c, prefix)
              for c in ("params", "batch_stats")}
  where = "/".join(prefix) or "<root>"
  target = f"the model's backbone at {where!r}"
  if path.endswith(CONVERTED_SUFFIX):
    loaded = _match_converted(load_converted(path), expected, repr(path),
                              target)
  else:
    state_dict = read_state_dict(path)
    loaded = _from_state_dict(state_dict, expected,
                              _family(arch, state_dict), repr(path), target)
  merged = dict(variables)
  for collection, subtree in loaded.items():
    if expected[collection] is not None:
      merged[collection] = _replace(variables[collection], prefix,
                                    jax.tree.map(jnp.asarray, subtree))
  return merged


def _subtree(variables: Mapping[str, Any], collection: str,
             prefix: tuple[str, ...]):
  node = variables.get(collection)
  if node is None:
    if collection == "params":
      raise ValueError("variables have no 'params' collection; pass the "
                       "whole variables dict, e.g. from model.init.")
    return None
  for depth, name in enumerate(prefix):
    if not isinstance(node, Mapping) or name not in node:
      if collection == "batch_stats":
        return None  # a backbone without BatchNorm
      known = sorted(node) if isinstance(node, Mapping) else []
      raise ValueError(f"variables['params'] has no "
                       f"{'/'.join(prefix[:depth + 1])!r}; its entries at "
                       f"that level are {known}. Pass the backbone's prefix.")
    node = node[name]
  return node


def _replace(tree: Mapping[str, Any], prefix: tuple[str, ...], value):
  if not prefix:
    return value
  out = dict(tree)
  out[prefix[0]] = _replace(tree[prefix[0]], prefix[1:], value)
  return out


def _match_converted(loaded: Variables, expected: Mapping[str, Any],
                     source: str, target: str) -> Variables:
  out, problems = {}, []
  for collection in ("params", "batch_stats"):
    want = traverse_util.flatten_dict(dict(expected[collection] or {}))
    have = traverse_util.flatten_dict(dict(loaded.get(collection) or {}))
    for path in sorted(set(want) | set(have)):
      name = f"{collection}/{'/'.join(path)}"
      if path not in have:
        problems.append(f"{name}: missing from the file (expected shape "
                        f"{tuple(want[path].shape)})")
      elif path not in want:
        problems.append(f"{name}: in the file but not in the model (shape "
                        f"{have[path].shape})")
      elif have[path].shape != tuple(want[path].shape):
        problems.append(f"{name}: expected shape {tuple(want[path].shape)}, "
                        f"found {have[path].shape}")
    out[collection] = traverse_util.unflatten_dict(
        {p: np.asarray(v, want[p].dtype) for p, v in have.items() if p in want}
    ) if have else {}
  if problems:
    _refuse(source, target, problems)
  return out
