"""Input pipeline: labeled + unlabeled train streams and eval passes.

Determinism, the contract the trainer relies on:
  - Labeled stream: step k is in epoch e = k // steps_per_epoch, whose order
    is `epoch_permutation(config.seed, e, N, stream=0)`; global batch k is
    perm[j*GB:(j+1)*GB] with j = k % steps_per_epoch (the remainder of an
    epoch is dropped) and process p takes rows [p*LB:(p+1)*LB] of it.
  - Unlabeled stream: the same over the "unlabeled" split with its own
    global batch size, its own epochs (it repeats independently), stream=1.
  - Augmentation (crop scale and offset, flip) is drawn from a hash of
    (seed, stream, epoch, index, draw), not from a stateful generator.
So (config.seed, k) alone fixes the global batch at step k, whatever the
process count; resuming at start_step=k computes the indices of the skipped
steps (a permutation per epoch) and decodes none of them.

How examples are read: a split is read once with tf.data from the source in
index order and kept in host memory (`_materialise`); each step gathers its
rows with numpy in a generator, then parallel tf.data maps decode (for
encoded images), crop, flip and normalise whole batches, with prefetch.
Decoded arrays are kept when they fit in `DECODED_CACHE_BYTES` (embedded
datasets: 50 MB for synthetic_scenes/default train, 600 MB at 448 px).
Sources of real images provide `encoded_examples(split)`: then the stored
JPEG/PNG bytes are kept (~13 GB for COCO-2014 train; per host, since every
host's batches touch the whole split) and decoded after the gather, so exact
permutations cost memory and one sequential read of the split at start-up,
never a re-read of the files. A split that fits neither way needs a source
with random access; that is not here yet.

Augmentation (train only): with config.data.crop_scales, a square box of
side s (uniform over the set) times the image side at a uniform offset,
resized to config.data.image_size by `tf.image.crop_and_resize` (bilinear)
straight from the stored image. Resizing to resize_size first and cropping
after selects the same box, so resize_size is only used to stack encoded
images of different sizes before the crop. Without crop_scales: a bilinear
antialiased resize when sizes differ. Flip: horizontal, probability 1/2.
Eval: resize only. Pixels are scaled to [0, 1], then ImageNet mean/std when
config.data.normalize == "imagenet".
"""
from __future__ import annotations

import itertools
import math
from typing import Iterator

import numpy as np
import tensorflow as tf

from jaxmlc.data.info import DatasetInfo

DECODED_CACHE_BYTES = 4 << 30
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABELED, UNLABELED = 0, 1     # stream ids in permutations and hashes
_LABEL_FIELDS = ("labels", "label_mask", "segment_labels")
_MAX_STORES = 8


# ---------------------------------------------------------------- randomness

def epoch_permutation(seed: int, epoch: int, num_examples: int,
                      stream: int = LABELED) -> np.ndarray:
  """int64 [N]: the order of a split in `epoch` of `stream`."""
  return np.random.default_rng([seed, stream, epoch]).permutation(num_examples)


def _mix(z: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser (uint64 arrays wrap around; that is the point)."""
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def hash_uniform(seed: int, stream: int, epoch: int, index: np.ndarray,
                 draw: int) -> np.ndarray:
  """f64 [n] in [0, 1), a fixed function of (seed, stream, epoch, index,
  draw)."""
  index = np.asarray(index, np.int64)
  h = np.full(index.shape, 0x9E3779B97F4A7C15, np.uint64)
  for key in (seed, stream, epoch, index, draw):
    h = _mix(h ^ np.asarray(key, np.int64).astype(np.uint64)
             + np.uint64(0x632BE59BD9B4E019))
  return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _augment_draws(config, stream: int, epoch: int, index: np.ndarray):
  """boxes f32 [n, 4] (normalised y1, x1, y2, x2) and flips bool [n].

  With crops, a flip is already in the box (x1 > x2 samples right to left).
  """
  u = lambda draw: hash_uniform(config.seed, stream, epoch, index, draw)
  scales = tuple(config.data.crop_scales)
  if scales:
    pick = np.minimum((u(0) * len(scales)).astype(np.int64), len(scales) - 1)
    side = np.asarray(scales, np.float64)[pick]
    y0, x0 = u(1) * (1 - side), u(2) * (1 - side)
    boxes = np.stack([y0, x0, y0 + side, x0 + side], axis=1)
  else:
    boxes = np.tile([0.0, 0.0, 1.0, 1.0], (index.size, 1))
  flips = (u(3) < 0.5) if config.data.flip else np.zeros(index.size, bool)
  boxes[flips] = boxes[flips][:, [0, 3, 2, 1]]
  return boxes.astype(np.float32), flips


# ------------------------------------------------------------ split storage

_STORES: dict[tuple[int, str], tuple[object, dict]] = {}


def _use_encoded(source, split: str) -> bool:
  info = source.info
  if info.input_kind != "image" or not hasattr(source, "encoded_examples"):
    return False
  if info.image_size is None:      # sizes differ: only bytes can be stacked
    return True
  decoded = info.num_examples[split] * info.image_size ** 2 * 3
  return decoded > DECODED_CACHE_BYTES


def _materialise(source, split: str) -> dict:
  """The numeric fields of `split` as arrays with leading dim N, index order.

  "image" is uint8 [N, H, W, 3], or object [N] of encoded bytes (then the
  dict has "_encoded": True). Cached per (source, split).
  """
  key = (id(source), split)
  if key in _STORES:
    return _STORES[key][1]
  info = source.info
  if split not in info.num_examples:
    raise ValueError(f"{info.name} has no split {split!r}; it has "
                     f"{', '.join(sorted(info.num_examples))}.")
  encoded = _use_encoded(source, split)
  if info.input_kind == "image" and info.image_size is None and not encoded:
    raise ValueError(
        f"{info.name}: images of different sizes cannot be batched from "
        "memory; its source must provide encoded_examples(split).")
  if encoded:
    try:
      ds = source.encoded_examples(split)
    except NotImplementedError:   # raw arrays on disk: keep them decoded
      encoded = False
  if not encoded:
    ds = source.examples(split)
  keep = [k for k, spec in ds.element_spec.items()
          if spec.dtype != tf.string or (encoded and k == "image")]
  ds = ds.map(lambda ex: {k: ex[k] for k in keep}).batch(1024)
  parts = list(ds.as_numpy_iterator())
  arrays = {k: np.concatenate([p[k] for p in parts]) for k in keep}
  order = np.argsort(arrays["index"], kind="stable")
  arrays = {k: v[order] for k, v in arrays.items()}
  if not np.array_equal(arrays["index"], np.arange(len(order))):
    raise ValueError(f"{info.name}/{split}: the 'index' field is not "
                     "0..N-1; the source must number its examples.")
  arrays["_encoded"] = encoded
  _STORES[key] = (source, arrays)   # holding the source keeps id() unique
  while len(_STORES) > _MAX_STORES:
    _STORES.pop(next(iter(_STORES)))
  return arrays


def _input_fields(store: dict) -> list[str]:
  return [k for k in store if k in ("image", "features", "frames", "modality2")
          or k.startswith("feat_")]


def _gather(store: dict, rows: np.ndarray, with_labels: bool) -> dict:
  fields = _input_fields(store)
  if with_labels:
    fields += [k for k in _LABEL_FIELDS if k in store]
  out = {k: store[k][rows] for k in fields}
  out["index"] = rows.astype(np.int32)
  return out


# ------------------------------------------------------------ tf.data maps

@tf.function(jit_compile=True)
def _crop_resize(images, boxes, size: int):
  """f32 [B, size, size, 3]: bilinear samples of each box of `images`.

  images: [B, H, W, 3] (any real dtype); boxes: f32 [B, 4] normalised
  (y1, x1, y2, x2), sampled like `tf.image.crop_and_resize` (corners on
  pixel centres; x1 > x2 mirrors). Separable: two row/column gathers and
  lerps, fused by XLA (2.5x tf.image.crop_and_resize on CPU).
  """
  steps = tf.range(size, dtype=tf.float32)

  def taps(lo, hi, n):
    # Start + i * stride: a full box at the same size lands on exact pixels.
    stride = (hi - lo) * (n - 1) / max(size - 1, 1)
    pos = tf.clip_by_value(lo[:, None] * (n - 1) + steps * stride[:, None],
                           0.0, n - 1.0)
    first = tf.cast(tf.floor(pos), tf.int32)
    return first, tf.minimum(first + 1, n - 1), pos - tf.cast(first, tf.float32)

  images = tf.cast(images, tf.float32)
  y0, y1, wy = taps(boxes[:, 0], boxes[:, 2], images.shape[1])
  x0, x1, wx = taps(boxes[:, 1], boxes[:, 3], images.shape[2])
  wy, wx = wy[:, :, None, None], wx[:, None, :, None]
  rows = (tf.gather(images, y0, axis=1, batch_dims=1) * (1 - wy)
          + tf.gather(images, y1, axis=1, batch_dims=1) * wy)
  return (tf.gather(rows, x0, axis=2, batch_dims=1) * (1 - wx)
          + tf.gather(rows, x1, axis=2, batch_dims=1) * wx)


@tf.function(jit_compile=True)
def _to_input(images, flips, scale, offset):
  """f32 [B, H, W, 3]: optional mirror, then images * scale + offset."""
  images = tf.cast(images, tf.float32)
  if flips is not None:
    images = tf.where(flips[:, None, None, None], tf.reverse(images, [2]),
                      images)
  return images * scale + offset


def _scale_offset(config):
  """Per-channel (scale, offset): pixels 0..255 -> [0, 1] -> ImageNet z."""
  if config.data.normalize == "imagenet":
    std, mean = np.asarray(IMAGENET_STD), np.asarray(IMAGENET_MEAN)
    return (tf.constant(1 / (255 * std), tf.float32),
            tf.constant(-mean / std, tf.float32))
  return tf.constant([1 / 255] * 3, tf.float32), tf.zeros(3, tf.float32)


def _decode(encoded, size: int | None, stored_size: int | None):
  """f32 [B, S, S, 3] from encoded bytes [B]; resized when sizes differ."""
  def one(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.cast(image, tf.float32)
    if stored_size != size:
      image = tf.image.resize(image, (size, size), antialias=True)
    return tf.ensure_shape(image, (size, size, 3))
  return tf.map_fn(one, encoded, parallel_iterations=16,
                   fn_output_signature=tf.TensorSpec((size, size, 3),
                                                     tf.float32))


def _images(batch: dict, config, info: DatasetInfo, encoded: bool,
            train: bool):
  """f32 [B, S, S, 3] network input from a batch of stored images."""
  size = config.data.image_size
  images = batch["image"]
  crop = train and bool(config.data.crop_scales)
  if encoded:    # resize_size matters here: decoded images are stacked
    base = (config.data.resize_size or size) if crop else size
    images = _decode(images, base, info.image_size)
  flips = None
  if crop:       # the flip is in the boxes
    images = _crop_resize(images, batch["boxes"], size)
  else:
    if images.shape[1] != size:
      images = tf.image.resize(tf.cast(images, tf.float32), (size, size),
                               antialias=True)
    flips = batch["flips"] if train and config.data.flip else None
  return _to_input(images, flips, *_scale_offset(config))


def _finish(batch: dict, config, info: DatasetInfo, encoded: bool,
            train: bool) -> dict:
  """Decode/augment/normalise one stream's batch; cast to f32 / i32."""
  out = {}
  for key, value in batch.items():
    if key in ("boxes", "flips"):
      continue
    if key == "index":
      out[key] = value
    elif key == "image":
      out[key] = _images(batch, config, info, encoded, train)
    else:
      out[key] = tf.cast(value, tf.float32)
  return out


def _signature(store: dict, rows: int, with_labels: bool, train: bool) -> dict:
  sample = _gather(store, np.zeros(1, np.int64), with_labels)
  spec = {k: tf.TensorSpec((rows,) + v.shape[1:],
                           tf.string if v.dtype == object else v.dtype)
          for k, v in sample.items()}
  if train and "image" in store:
    spec["boxes"] = tf.TensorSpec((rows, 4), tf.float32)
    spec["flips"] = tf.TensorSpec((rows,), tf.bool)
  return spec


def _to_numpy(ds, config) -> Iterator[dict]:
  prefetch = config.data.prefetch     # batches; < 0: AUTOTUNE, 0: none
  if prefetch:
    ds = ds.prefetch(tf.data.AUTOTUNE if prefetch < 0 else prefetch)
  return ds.as_numpy_iterator()


def _parallel(config) -> int:
  calls = config.data.parallel_calls
  return tf.data.AUTOTUNE if calls is None or calls < 0 else max(1, calls)


# ------------------------------------------------------------ checks

def _check(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


def _check_common(config, process_index: int, process_count: int):
  _check(process_count >= 1 and 0 <= process_index < process_count,
         f"process_index={process_index} must be in [0, process_count="
         f"{process_count}).")
  _check(config.seed >= 0, f"config.seed must be >= 0, got {config.seed}.")
  _check(config.data.normalize in ("imagenet", "none"),
         f"config.data.normalize must be 'imagenet' or 'none', got "
         f"{config.data.normalize!r}.")
  scales = tuple(config.data.crop_scales)
  _check(all(0 < s <= 1 for s in scales),
         f"config.data.crop_scales are crop sides as fractions of the "
         f"(resized) image, each in (0, 1]; got {scales}.")


def _check_batch(name: str, size: int, split_size: int, split: str,
                 process_count: int):
  _check(size > 0, f"{name} must be positive, got {size}.")
  _check(size % process_count == 0,
         f"{name}={size} does not divide by the {process_count} processes; "
         f"use a multiple of {process_count}.")
  _check(size <= split_size,
         f"{name}={size} is larger than split {split!r} ({split_size} "
         f"examples): an epoch would have no full batch. Use at most "
         f"{split_size}.")


# ------------------------------------------------------------ public API

def steps_per_epoch(config, info: DatasetInfo) -> int:
  """Full global batches per epoch of the train split (remainder dropped)."""
  return (info.num_examples[config.data.train_split]
          // config.train.global_batch_size)


def _stream_rows(seed: int, stream: int, num_examples: int, global_batch: int,
                 local_batch: int, process_index: int, start_step: int):
  """Yields (epoch, rows int64 [LB]) for steps start_step, start_step+1, ..."""
  per_epoch = num_examples // global_batch
  epoch, perm = None, None
  for step in itertools.count(start_step):
    e, j = divmod(step, per_epoch)
    if e != epoch:
      epoch, perm = e, epoch_permutation(seed, e, num_examples, stream)
    start = j * global_batch + process_index * local_batch
    yield e, perm[start:start + local_batch]


def train_batches(config, source, known_mask: np.ndarray | None, *,
                  start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict]:
  """Host-local train batches for steps start_step, start_step + 1, ...

  Yields {"labeled": {"image": f32 [LB, S, S, 3] (or "features"/"frames"),
  optional "modality2"/"feat_*" f32, "labels": f32 [LB, C], "label_mask":
  f32 [LB, C] = dataset mask * known_mask[index], ("segment_labels" f32
  [LB, 4, C] for video), "index": i32 [LB]}, "unlabeled": {inputs, "index"}}
  with LB = global_batch_size // process_count; "unlabeled" only when
  config.data.unlabeled_batch_size > 0 (global). Endless: epochs continue.
  known_mask: uint8 [N, C] over the train split (`partial.known_label_mask`)
  or None (all known).
  """
  _check_common(config, process_index, process_count)
  _check(start_step >= 0, f"start_step must be >= 0, got {start_step}.")
  _check(not config.data.shuffle_buffer,
         f"config.data.shuffle_buffer={config.data.shuffle_buffer}: this "
         "pipeline always uses a full-split permutation per epoch (exact "
         "resume); set it to 0.")
  info = source.info
  split = config.data.train_split
  _check(split in info.num_examples,
         f"config.data.train_split={split!r} is not a split of {info.name} "
         f"({', '.join(sorted(info.num_examples))}).")
  num_train = info.num_examples[split]
  batch = config.train.global_batch_size
  _check_batch("config.train.global_batch_size", batch, num_train, split,
               process_count)
  labeled = _materialise(source, split)
  shape = labeled["labels"].shape
  if known_mask is None:
    known_mask = np.ones(shape, np.uint8)
  _check(known_mask.shape == shape,
         f"known_mask has shape {known_mask.shape}, expected {shape} (the "
         f"{split!r} labels); build it with partial.known_label_mask.")
  unlabeled_batch = config.data.unlabeled_batch_size
  unlabeled = None
  if unlabeled_batch > 0:
    _check("unlabeled" in info.num_examples,
           f"config.data.unlabeled_batch_size={unlabeled_batch} but "
           f"{info.name} has no 'unlabeled' split; set it to 0.")
    _check_batch("config.data.unlabeled_batch_size", unlabeled_batch,
                 info.num_examples["unlabeled"], "unlabeled", process_count)
    unlabeled = _materialise(source, "unlabeled")
  local, local_u = batch // process_count, unlabeled_batch // process_count

  def generate():
    rows = _stream_rows(config.seed, LABELED, num_train, batch, local,
                        process_index, start_step)
    rows_u = (_stream_rows(config.seed, UNLABELED, len(unlabeled["index"]),
                           unlabeled_batch, local_u, process_index, start_step)
              if unlabeled is not None else itertools.repeat(None))
    for (epoch, idx), nxt in zip(rows, rows_u):
      lab = _gather(labeled, idx, with_labels=True)
      lab["label_mask"] = lab["label_mask"] * known_mask[idx]
      if "image" in lab:
        lab["boxes"], lab["flips"] = _augment_draws(config, LABELED, epoch, idx)
      element = {"labeled": lab}
      if nxt is not None:
        epoch_u, idx_u = nxt
        unl = _gather(unlabeled, idx_u, with_labels=False)
        if "image" in unl:
          unl["boxes"], unl["flips"] = _augment_draws(config, UNLABELED,
                                                      epoch_u, idx_u)
        element["unlabeled"] = unl
      yield element

  spec = {"labeled": _signature(labeled, local, True, True)}
  if unlabeled is not None:
    spec["unlabeled"] = _signature(unlabeled, local_u, False, True)
  ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
  ds = ds.map(lambda el: {k: _finish(v, config, info, bool(
      (labeled if k == "labeled" else unlabeled)["_encoded"]), train=True)
                          for k, v in el.items()},
              num_parallel_calls=_parallel(config), deterministic=True)
  return _to_numpy(ds, config)


def eval_batches(config, source, split: str, *, batch_size: int | None = None,
                 process_index: int = 0, process_count: int = 1,
                 known_mask: np.ndarray | None = None) -> Iterator[dict]:
  """One pass over `split` in index order, no augmentation (resize only).

  batch_size: global (default config.train.eval_batch_size, else
  global_batch_size). Global batch j covers rows [j*GB, (j+1)*GB) of the
  split and process p yields its contiguous slice [p*LB, (p+1)*LB), LB =
  GB // process_count, so the gathered global batches are in index order
  and every process yields ceil(N / GB) batches. Rows past the end repeat
  the last example with "valid" 0 and an all-zero "label_mask".
  known_mask: optional uint8 [N, C] multiplied into "label_mask" (passes
  over the train split with partial labels).
  Yields {"labeled": {inputs, "labels", "label_mask", "index": i32 [LB],
  "valid": f32 [LB]}}.
  """
  _check_common(config, process_index, process_count)
  info = source.info
  _check(split in info.num_examples,
         f"{info.name} has no split {split!r}; it has "
         f"{', '.join(sorted(info.num_examples))}.")
  batch = (batch_size or config.train.eval_batch_size
           or config.train.global_batch_size)
  _check(batch > 0 and batch % process_count == 0,
         f"eval batch size {batch} must be positive and divide by the "
         f"{process_count} processes; use a multiple of {process_count}.")
  store = _materialise(source, split)
  num = info.num_examples[split]
  if known_mask is not None:
    _check(known_mask.shape == store["labels"].shape,
           f"known_mask has shape {known_mask.shape}, expected "
           f"{store['labels'].shape} (the {split!r} labels).")
  local = batch // process_count

  def generate():
    for j in range(math.ceil(num / batch)):
      position = j * batch + process_index * local + np.arange(local)
      valid = position < num
      rows = np.minimum(position, num - 1)
      element = _gather(store, rows, with_labels=True)
      keep = valid[:, None].astype(np.uint8)
      if known_mask is not None:
        keep = keep * known_mask[rows]
      element["label_mask"] = element["label_mask"] * keep
      element["valid"] = valid.astype(np.float32)
      yield {"labeled": element}

  spec = _signature(store, local, True, False)
  spec["valid"] = tf.TensorSpec((local,), tf.float32)
  ds = tf.data.Dataset.from_generator(generate,
                                      output_signature={"labeled": spec})
  ds = ds.map(lambda el: {"labeled": _finish(el["labeled"], config, info,
                                             bool(store["_encoded"]),
                                             train=False)},
              num_parallel_calls=_parallel(config), deterministic=True)
  return _to_numpy(ds, config)
