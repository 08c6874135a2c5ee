"""Known-label masks for partial-label training.

Computed once over the whole train split in index order from one seed
(`config.data.mask_seed`), so every host and every resume agrees.
"""
from __future__ import annotations

import numpy as np


def known_label_mask(labels_or_shape, proportion: float,
                     seed: int = 0) -> np.ndarray:
  """uint8 [N, C]: 1 where the label is known to the learner.

  labels_or_shape: the train labels [N, C] (only the shape is used) or the
    shape itself.
  proportion: config.data.known_label_proportion, in (0, 1]; 1 keeps all.
  Exactly `np.random.default_rng(seed).random(shape) < proportion`.
  """
  if isinstance(labels_or_shape, np.ndarray):
    shape = labels_or_shape.shape
  else:
    shape = tuple(int(d) for d in labels_or_shape)
  if len(shape) != 2:
    raise ValueError(f"known_label_mask expects train labels [N, C] or their "
                     f"shape (N, C); got shape {shape}.")
  proportion = float(proportion)
  if not 0.0 < proportion <= 1.0:
    raise ValueError(
        f"config.data.known_label_proportion must be in (0, 1] (the fraction "
        f"of train labels the learner sees, 1.0 = all), got {proportion}.")
  rng = np.random.default_rng(seed)
  return (rng.random(shape) < proportion).astype(np.uint8)
