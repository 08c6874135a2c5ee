"""`synthetic_scenes`: procedurally drawn multi-label scenes (no download).

The world is fixed (the same for every seed and config):
  - 20 classes, each a (colour, texture, shape) triple; every attribute is
    shared by several classes and some pairs differ in one attribute only
    (red solid circle / red striped circle / green striped circle), so no
    single colour or shape statistic names a class.
  - 6 latent scene contexts, each a distribution over classes: 88% of the
    mass on 5 "core" classes (some shared between contexts), 12% spread
    over all. Objects in an image are drawn from one context, so labels
    co-occur far more often than independence predicts.
A split draws, per image, a context, 1-5 objects (positions, scales from
7% to 22% of the side, rotations, occlusion; small objects on top) over a
cluttered background; paired with
  - "modality2": f32 [256] tag bag-of-words counts. Words 8c..8c+7 belong to
    class c, 160+8z..160+8z+7 to context z, 208..255 to nobody. Present
    classes emit Poisson(2.5) tags (20% of them another class's words),
    the context Poisson(2) tags, plus Poisson(3) uniform noise words; each
    class/context tag is dropped with probability 0.3 and all of an image's
    class tags with probability 0.1.
  - "feat_view2": f32 [64] a second view for MMDL: tanh of a fixed random
    projection of the labels (each present label seen with probability 0.8)
    plus the context, with Gaussian noise.
Split "unlabeled" keeps the same schema (so one TFDS feature spec serves
every split) with all-zero "labels" and "label_mask"; its images, tags and
view2 are real, methods that treat the pool as images-only ignore them.

The "video" configs replace the image by "frames": f32 [32, 64] frame
features of a clip of 4 segments of 8 frames; each segment shows 0-2
classes of the clip's context (a smooth bump of each class's prototype
vector over the segment, plus context and noise), "segment_labels":
uint8 [4, C], and "labels" = their union.

Everything is a pure function of (config, split, seed): `generate_split`
and `generate_video_split` return the numpy arrays the builder writes.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from jaxmlc.data.builders import scene_drawing as drawing

CLASSES = (   # (colour, texture, shape)
    ("red", "solid", "circle"), ("red", "striped", "square"),
    ("green", "solid", "triangle"), ("blue", "checkered", "circle"),
    ("yellow", "solid", "diamond"), ("magenta", "dotted", "cross"),
    ("cyan", "striped", "ring"), ("blue", "solid", "star"),
    ("red", "checkered", "triangle"), ("green", "striped", "circle"),
    ("yellow", "dotted", "square"), ("magenta", "solid", "ring"),
    ("cyan", "checkered", "diamond"), ("red", "dotted", "cross"),
    ("green", "checkered", "star"), ("blue", "striped", "triangle"),
    ("yellow", "checkered", "ring"), ("red", "striped", "circle"),
    ("green", "solid", "square"), ("white", "dotted", "diamond"),
)
CLASS_NAMES = tuple("_".join(c) for c in CLASSES)
CONTEXT_CORE = (   # core classes of each latent context, most frequent first
    (0, 1, 2, 3, 4), (3, 5, 6, 7, 8), (8, 9, 10, 11, 12),
    (12, 13, 14, 15, 0), (15, 16, 17, 18, 5), (18, 19, 1, 10, 6),
)
_CORE_WEIGHTS = np.array([0.30, 0.25, 0.20, 0.15, 0.10])
_CORE_MASS = 0.88
_NUM_OBJECTS_P = np.array([0.2, 0.3, 0.25, 0.15, 0.1])   # 1..5 objects

VOCAB_SIZE = 256
_WORDS_PER_TOPIC = 8           # per class and per context
_CONTEXT_WORDS_START = 160     # 20 classes x 8 words before
VIEW2_DIM = 64
FRAMES_SHAPE = (32, 64)        # (T, D) of the video configs
NUM_SEGMENTS = 4
_WORLD_SEED = 20240607         # fixes projections and prototypes, not samples
_SPLIT_IDS = {"train": 0, "test": 1, "unlabeled": 2}

assert len(set(CLASSES)) == len(CLASSES), "classes must be distinct triples"


def class_table() -> dict:
  """{"shape": int [C], "texture": int [C], "colour": f32 [C, 3]}."""
  return {
      "shape": np.array([drawing.SHAPES.index(s) for _, _, s in CLASSES]),
      "texture": np.array([drawing.TEXTURES.index(t) for _, t, _ in CLASSES]),
      "colour": np.array([drawing.COLOURS[c] for c, _, _ in CLASSES],
                         np.float32),
  }


def context_class_probs() -> np.ndarray:
  """f64 [Z, C]: p(class | context); rows sum to 1."""
  num_classes = len(CLASSES)
  probs = np.full((len(CONTEXT_CORE), num_classes),
                  (1 - _CORE_MASS) / num_classes)
  for z, core in enumerate(CONTEXT_CORE):
    probs[z, list(core)] += _CORE_MASS * _CORE_WEIGHTS
  return probs


@functools.cache
def _world() -> dict:
  rng = np.random.default_rng(_WORLD_SEED)
  num_classes, num_contexts = len(CLASSES), len(CONTEXT_CORE)
  return {
      "view2_labels": rng.normal(0, 1, (num_classes, VIEW2_DIM)),
      "view2_context": rng.normal(0, 1, (num_contexts, VIEW2_DIM)),
      "frame_class": rng.normal(0, 1, (num_classes, FRAMES_SHAPE[1])),
      "frame_context": rng.normal(0, 1, (num_contexts, FRAMES_SHAPE[1])),
  }


def _split_rng(seed: int, split: str, stream: int) -> np.random.Generator:
  if split not in _SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; expected one of "
                     f"{sorted(_SPLIT_IDS)}")
  return np.random.default_rng([seed, _SPLIT_IDS[split], stream])


def sample_objects(rng, num_examples: int):
  """Latent contexts int [N] and object classes int [N, 5] (-1 = none)."""
  probs = context_class_probs()
  context = rng.integers(0, len(CONTEXT_CORE), num_examples)
  count = rng.choice(np.arange(1, 6), num_examples, p=_NUM_OBJECTS_P)
  # Inverse-CDF sampling of every slot at once from its row's context.
  cdf = np.cumsum(probs, axis=1)[context]                       # [N, C]
  u = rng.random((num_examples, drawing.MAX_OBJECTS, 1))
  classes = np.minimum((u > cdf[:, None, :]).sum(-1), len(CLASSES) - 1)
  slots = np.arange(drawing.MAX_OBJECTS)[None, :]
  return context, np.where(slots < count[:, None], classes, -1)


def multi_hot(classes: np.ndarray, num_classes: int) -> np.ndarray:
  """uint8 [N, C] from int [N, K] class ids (-1 ignored)."""
  labels = np.zeros((classes.shape[0], num_classes + 1), np.uint8)
  np.put_along_axis(labels, np.where(classes >= 0, classes, num_classes), 1,
                    axis=1)
  return labels[:, :num_classes]


def _topic_words(rng, topic: np.ndarray, start: int) -> np.ndarray:
  """One word id per tag of `topic`: Zipf-like within its 8-word block."""
  zipf = 1.0 / np.arange(1, _WORDS_PER_TOPIC + 1)
  offset = rng.choice(_WORDS_PER_TOPIC, topic.size, p=zipf / zipf.sum())
  return start + topic * _WORDS_PER_TOPIC + offset


def tag_counts(rng, context: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """f32 [N, 256] bag-of-words tag counts (see the module docstring)."""
  n, num_classes = labels.shape
  keep = 0.7
  class_tags = rng.binomial(rng.poisson(2.5, labels.shape) * labels, keep)
  class_tags *= (rng.random(n) >= 0.1)[:, None]     # 10%: no class tags
  rows, cols = np.nonzero(class_tags)
  reps = class_tags[rows, cols]
  tag_image, tag_class = np.repeat(rows, reps), np.repeat(cols, reps)
  confused = rng.random(tag_class.size) < 0.2
  tag_class = np.where(confused, rng.integers(0, num_classes, tag_class.size),
                       tag_class)
  ctx_tags = rng.binomial(rng.poisson(2.0, n), keep)
  ctx_image = np.repeat(np.arange(n), ctx_tags)
  noise_tags = rng.poisson(3.0, n)
  noise_image = np.repeat(np.arange(n), noise_tags)
  bow = np.zeros((n, VOCAB_SIZE), np.float32)
  np.add.at(bow, (tag_image, _topic_words(rng, tag_class, 0)), 1)
  np.add.at(bow, (ctx_image, _topic_words(rng, context[ctx_image],
                                          _CONTEXT_WORDS_START)), 1)
  np.add.at(bow, (noise_image, rng.integers(0, VOCAB_SIZE, noise_image.size)),
            1)
  return bow


def feature_view2(rng, context: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """f32 [N, 64]: noisy nonlinear projection of (labels, context)."""
  world = _world()
  seen = labels * (rng.random(labels.shape) < 0.8)
  pre = (seen @ world["view2_labels"]
         + 0.7 * world["view2_context"][context]
         + rng.normal(0, 2.0, (labels.shape[0], VIEW2_DIM)))
  return np.tanh(pre / 3.0).astype(np.float32)


def generate_split(split: str, num_examples: int, image_size: int,
                   seed: int = 0) -> dict:
  """numpy arrays of one split of the image configs.

  Returns {"image": uint8 [N, S, S, 3], "modality2": f32 [N, 256],
  "feat_view2": f32 [N, 64], "labels": uint8 [N, C], "label_mask":
  uint8 [N, C], "context": int [N] (latent; not written to TFDS)}.
  """
  context, classes = sample_objects(_split_rng(seed, split, 0), num_examples)
  labels = multi_hot(classes, len(CLASSES))
  layout = drawing.sample_layout(_split_rng(seed, split, 1), classes)
  image = drawing.render(layout, class_table(), image_size,
                         noise_seed=[seed, _SPLIT_IDS[split], 2])
  has_labels = split != "unlabeled"
  return {
      "image": image,
      "modality2": tag_counts(_split_rng(seed, split, 3), context, labels),
      "feat_view2": feature_view2(_split_rng(seed, split, 4), context, labels),
      "labels": labels * np.uint8(has_labels),
      "label_mask": np.full(labels.shape, has_labels, np.uint8),
      "context": context,
  }


def generate_video_split(split: str, num_examples: int, seed: int = 0) -> dict:
  """numpy arrays of one split of the video configs.

  Returns {"frames": f32 [N, T, D], "segment_labels": uint8 [N, 4, C],
  "labels": uint8 [N, C], "label_mask": uint8 [N, C], "context": int [N]}.
  """
  rng = _split_rng(seed, split, 5)
  num_classes = len(CLASSES)
  t_len, dim = FRAMES_SHAPE
  seg_len = t_len // NUM_SEGMENTS
  context = rng.integers(0, len(CONTEXT_CORE), num_examples)
  cdf = np.cumsum(context_class_probs(), axis=1)[context]            # [N, C]
  u = rng.random((num_examples, NUM_SEGMENTS, 2, 1))
  classes = np.minimum((u > cdf[:, None, None, :]).sum(-1), num_classes - 1)
  active = rng.choice(3, (num_examples, NUM_SEGMENTS), p=[0.15, 0.6, 0.25])
  active[active.max(axis=1) == 0, 0] = 1        # every clip shows something
  classes = np.where(np.arange(2) < active[..., None], classes, -1)
  segment_labels = multi_hot(classes.reshape(-1, 2), num_classes).reshape(
      num_examples, NUM_SEGMENTS, num_classes)
  world = _world()
  bump = np.sin(np.pi * (np.arange(seg_len) + 0.5) / seg_len)        # [L]
  per_segment = segment_labels @ world["frame_class"]                # [N,S,D]
  frames = (per_segment[:, :, None, :] * bump[None, None, :, None]).reshape(
      num_examples, t_len, dim)
  frames = (frames + 0.5 * world["frame_context"][context][:, None, :]
            + rng.normal(0, 1.0, frames.shape))
  labels = segment_labels.max(axis=1)
  has_labels = split != "unlabeled"
  return {
      "frames": frames.astype(np.float32),
      "segment_labels": segment_labels * np.uint8(has_labels),
      "labels": labels * np.uint8(has_labels),
      "label_mask": np.full(labels.shape, has_labels, np.uint8),
      "context": context,
  }


@dataclasses.dataclass(eq=False)
class SyntheticScenesConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  num_train: int = 4000
  num_unlabeled: int = 8000
  num_test: int = 2000
  video: bool = False
  seed: int = 0


def _config(name, description, **kwargs):
  return SyntheticScenesConfig(name=name, description=description, **kwargs)


class SyntheticScenes(tfds.core.GeneratorBasedBuilder):
  """Procedural multi-label scenes with tags and a second feature view."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      _config("default", "64 px; train 4000 / unlabeled 8000 / test 2000."),
      _config("tiny", "32 px; train 256 / unlabeled 256 / test 128 (tests).",
              image_size=32, num_train=256, num_unlabeled=256, num_test=128),
      _config("img32", "32 px, default split sizes.", image_size=32),
      _config("img128", "128 px, default split sizes.", image_size=128),
      # 602 KB per image: smaller splits keep it at 1.5 GB and ~1 min.
      _config("img448", "448 px; train 1000 / unlabeled 1000 / test 500.",
              image_size=448, num_train=1000, num_unlabeled=1000,
              num_test=500),
      _config("video", "frames f32 [32, 64] with segment labels.", video=True),
      _config("video_tiny", "video; train 256 / unlabeled 256 / test 128.",
              video=True, num_train=256, num_unlabeled=256, num_test=128),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    num_classes = len(CLASSES)
    # Raw bytes, not PNG: the per-pixel noise makes PNG nearly as big as raw
    # (446 KB vs 602 KB at 448 px) and costs ~50 ms per image to encode.
    tensor = lambda shape, dtype: tfds.features.Tensor(
        shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)
    features = {
        "labels": tensor((num_classes,), np.uint8),
        "label_mask": tensor((num_classes,), np.uint8),
        "id": tfds.features.Text(),
        "index": tfds.features.Scalar(dtype=np.int64),
    }
    if c.video:
      features["frames"] = tensor(FRAMES_SHAPE, np.float32)
      features["segment_labels"] = tensor((NUM_SEGMENTS, num_classes),
                                          np.uint8)
    else:
      features["image"] = tensor((c.image_size, c.image_size, 3), np.uint8)
      features["modality2"] = tensor((VOCAB_SIZE,), np.float32)
      features["feat_view2"] = tensor((VIEW2_DIM,), np.float32)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,       # index order = generation order
        metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager   # nothing to download
    c = self.builder_config
    sizes = {"train": c.num_train, "unlabeled": c.num_unlabeled,
             "test": c.num_test}
    return {split: self._generate_examples(split, n)
            for split, n in sizes.items()}

  def _generate_examples(self, split, num_examples):
    c = self.builder_config
    if c.video:
      arrays = generate_video_split(split, num_examples, c.seed)
    else:
      arrays = generate_split(split, num_examples, c.image_size, c.seed)
    arrays.pop("context")
    for i in range(num_examples):
      example = {key: a[i] for key, a in arrays.items()}
      yield i, dict(example, id=f"{split}_{i:06d}", index=i)
