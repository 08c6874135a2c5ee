"""Vectorised numpy drawing for `synthetic_scenes`: shapes, textures, clutter.

Everything here is a pure function of parameter arrays drawn beforehand
(`sample_layout`), so an image is the same whatever the chunking or the
resolution it is rendered at (up to the per-pixel noise, seeded per chunk).
Coordinates are fractions of the image side, so one layout renders at 32,
64, 128 or 448 px.
"""
from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star")
TEXTURES = ("solid", "striped", "checkered", "dotted")
COLOURS = {
    "red": (0.90, 0.12, 0.10), "green": (0.10, 0.72, 0.20),
    "blue": (0.15, 0.30, 0.95), "yellow": (0.95, 0.85, 0.10),
    "magenta": (0.85, 0.10, 0.80), "cyan": (0.10, 0.85, 0.90),
    "white": (0.96, 0.96, 0.96),
}
MAX_OBJECTS = 5
NUM_CLUTTER_LINES = 8
NUM_WAVES = 3
# Texture period in object radii: about four bands across an object, so the
# texture of the smallest objects (radius ~4 px at 64 px) is barely visible.
_TEXTURE_PERIOD = 0.55
_CHUNK_PIXELS = 1 << 18   # pixels rendered at once: stays in cache-sized arrays


def sample_layout(rng: np.random.Generator, classes: np.ndarray) -> dict:
  """Positions, scales, colours and clutter for a batch of scenes.

  classes: int [N, MAX_OBJECTS], -1 for an empty slot.
  Returns arrays with leading dim N; slot arrays are [N, MAX_OBJECTS].
  Slots are sorted by decreasing radius so small objects are drawn last and
  are only ever partly hidden, while big ones can be occluded.
  """
  n = classes.shape[0]
  k = MAX_OBJECTS
  radius = np.exp(rng.uniform(np.log(0.07), np.log(0.22), (n, k)))
  radius = np.where(classes >= 0, radius, 0.0)
  order = np.argsort(-radius, axis=1, kind="stable")
  take = lambda a: np.take_along_axis(a, order, axis=1)
  classes, radius = take(classes), take(radius)
  margin = 0.6 * radius   # objects may be cut by the border, never lost
  layout = {
      "classes": classes,
      "radius": radius,
      "cx": margin + rng.uniform(0, 1, (n, k)) * (1 - 2 * margin),
      "cy": margin + rng.uniform(0, 1, (n, k)) * (1 - 2 * margin),
      "angle": rng.uniform(0, 2 * np.pi, (n, k)),
      "brightness": rng.uniform(0.75, 1.0, (n, k)),
      "tint": rng.normal(0, 0.05, (n, k, 3)),
      "bg_base": (rng.uniform(0.25, 0.6, (n, 1))
                  + rng.uniform(-0.1, 0.1, (n, 3))),
      "wave_freq": rng.uniform(0.5, 4.0, (n, NUM_WAVES)),
      "wave_dir": rng.uniform(0, 2 * np.pi, (n, NUM_WAVES)),
      "wave_phase": rng.uniform(0, 2 * np.pi, (n, NUM_WAVES)),
      "wave_amp": rng.uniform(0, 0.12, (n, NUM_WAVES, 3)),
      "line_start": rng.uniform(0, 1, (n, NUM_CLUTTER_LINES, 2)),
      "line_end": rng.uniform(0, 1, (n, NUM_CLUTTER_LINES, 2)),
      "line_width": rng.uniform(0.004, 0.014, (n, NUM_CLUTTER_LINES)),
      # Some clutter is as saturated as the objects, so colour alone is not
      # enough to find them.
      "line_colour": rng.uniform(0, 1, (n, NUM_CLUTTER_LINES, 3))
                     * rng.uniform(0.3, 1.0, (n, NUM_CLUTTER_LINES, 1)),
  }
  return {key: a.astype(np.float32) if a.dtype == np.float64 else a
          for key, a in layout.items()}


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """bool [...]: inside `shape` of radius 1 centred at the origin."""
  if shape == "circle":
    return u * u + v * v < 1.0
  if shape == "square":
    return np.maximum(np.abs(u), np.abs(v)) < 0.8
  if shape == "triangle":   # vertices (0, -1), (+-0.87, 0.5)
    return (v < 0.5) & (np.abs(u) < (v + 1.0) / np.sqrt(3.0))
  if shape == "diamond":
    return np.abs(u) + np.abs(v) < 1.0
  if shape == "cross":
    au, av = np.abs(u), np.abs(v)
    return ((au < 0.32) & (av < 1.0)) | ((av < 0.32) & (au < 1.0))
  if shape == "ring":
    r2 = u * u + v * v
    return (r2 < 1.0) & (r2 > 0.36)
  if shape == "star":       # five points
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    return rho < 0.42 + 0.58 * ((np.cos(5 * phi) + 1) / 2) ** 2
  raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def texture_pattern(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """f32 [...]: brightness factor of `texture` in object coordinates."""
  p = _TEXTURE_PERIOD
  if texture == "solid":    # gentle shading only
    on = 0.9 + 0.1 * v
  elif texture == "striped":
    on = np.floor(u / p) % 2 == 0
  elif texture == "checkered":
    on = (np.floor(u / p) + np.floor(v / p)) % 2 == 0
  elif texture == "dotted":
    du, dv = u / p - np.round(u / p), v / p - np.round(v / p)
    on = du * du + dv * dv < 0.09
  else:
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
  if on.dtype == bool:
    return np.where(on, 1.0, 0.28).astype(np.float32)
  return on.astype(np.float32)


def _paint_background(canvas, layout: dict, sl: slice, size: int, pad: int):
  """Low-frequency colour waves plus clutter lines into the canvas interior."""
  grid = (np.arange(size, dtype=np.float32) + 0.5) / size
  n = canvas.shape[0]
  # cos(ax + by + p) = cos(ax) cos(by + p) - sin(ax) sin(by + p), so the sum
  # of the waves per channel is one batched matmul over 2 x NUM_WAVES terms.
  f = 2 * np.pi * layout["wave_freq"][sl]                          # [n, W]
  d = layout["wave_dir"][sl]
  ax = (f * np.cos(d))[:, :, None] * grid                          # [n, W, x]
  by = ((f * np.sin(d))[:, :, None] * grid
        + layout["wave_phase"][sl][:, :, None])                     # [n, W, y]
  amp = layout["wave_amp"][sl]                                     # [n, W, 3]
  base = np.broadcast_to(layout["bg_base"][sl][:, None, None, :],
                         (n, 1, size, 3))
  left = np.concatenate([np.cos(by)[:, :, :, None] * amp[:, :, None, :],
                         -np.sin(by)[:, :, :, None] * amp[:, :, None, :],
                         base], axis=1)                      # [n, 2W + 1, y, 3]
  right = np.concatenate([np.cos(ax), np.sin(ax), np.ones_like(ax[:, :1])],
                         axis=1)                             # [n, 2W + 1, x]
  left = left.transpose(0, 2, 3, 1).reshape(n, size * 3, 2 * NUM_WAVES + 1)
  waves = np.matmul(left, right).reshape(n, size, 3, size)   # [n, y, 3, x]
  canvas[:, pad:pad + size, pad:pad + size] = waves.transpose(0, 1, 3, 2)
  # Clutter lines are stamped, not tested per pixel: about a point per pixel
  # along the segment, spread across its width along the normal.
  start, end = layout["line_start"][sl], layout["line_end"][sl]   # [n, L, 2]
  along = np.linspace(0, 1, int(1.5 * size), dtype=np.float32)
  seg = end - start
  normal = np.stack([-seg[..., 1], seg[..., 0]], -1) / np.maximum(
      np.linalg.norm(seg, axis=-1, keepdims=True), 1e-6)
  half_px = float(layout["line_width"][sl].max()) * size
  across = np.linspace(-1, 1, max(2, int(np.ceil(2 * half_px)) + 1),
                       dtype=np.float32)
  width = layout["line_width"][sl][:, :, None, None, None]
  pos = (start[:, :, None, None, :] + along[None, None, :, None, None]
         * seg[:, :, None, None, :] + across[None, None, None, :, None]
         * width * normal[:, :, None, None, :])          # [n, L, P, Q, 2]
  pix = (pos * size).astype(np.int32) + pad   # truncation: fine in the pad
  rows = np.arange(n, dtype=np.int32)[:, None, None, None]
  colour = _as_pixels(np.ascontiguousarray(layout["line_colour"][sl]))
  _as_pixels(canvas)[rows, pix[..., 1], pix[..., 0]] = colour[:, :, None, None]


def _as_pixels(a: np.ndarray) -> np.ndarray:
  """View f32 [..., 3] as [...] of 12-byte pixels: one fancy op, not three."""
  return a.view(np.dtype((np.void, 12)))[..., 0]


# A shape of radius 1 fits in this half-extent whatever its rotation (the
# square's corner is at 0.8 * sqrt(2)).
_EXTENT = 1.15
_GROUP = 16   # objects of similar size share one box side


def _paint_objects(canvas, layout: dict, sl: slice, size: int, pad: int,
                   class_table: dict):
  """Paints each slot's objects in order (later ones occlude) on their boxes."""
  for k in range(MAX_OBJECTS):
    cls = layout["classes"][sl, k]
    rows = np.nonzero(cls >= 0)[0]
    rows = rows[np.argsort(layout["radius"][sl, k][rows], kind="stable")]
    for g in range(0, rows.size, _GROUP):
      sub = rows[g:g + _GROUP]
      _paint_group(canvas, {key: layout[key][sl, k][sub] for key in
                            ("radius", "cx", "cy", "angle", "brightness",
                             "tint", "classes")}, sub, size, pad, class_table)


def _paint_group(canvas, obj: dict, rows, size, pad, class_table):
  """One object in each of `rows` (distinct images), on a shared box side."""
  r, cx, cy, a = obj["radius"], obj["cx"], obj["cy"], obj["angle"]
  box = int(np.ceil(2 * _EXTENT * r.max() * size)) + 2
  x0 = np.floor(cx * size - box / 2).astype(np.int32)
  y0 = np.floor(cy * size - box / 2).astype(np.int32)
  px = x0[:, None] + np.arange(box, dtype=np.int32)[None, :]    # [n, box]
  py = y0[:, None] + np.arange(box, dtype=np.int32)[None, :]
  dx = ((px + np.float32(0.5)) / size - cx[:, None]) / r[:, None]
  dy = ((py + np.float32(0.5)) / size - cy[:, None]) / r[:, None]
  cos, sin = np.cos(a)[:, None, None], np.sin(a)[:, None, None]
  u = cos * dx[:, None, :] + sin * dy[:, :, None]                # [n, y, x]
  v = -sin * dx[:, None, :] + cos * dy[:, :, None]
  shape_ids = class_table["shape"][obj["classes"]]
  texture_ids = class_table["texture"][obj["classes"]]
  mask = np.zeros(u.shape, bool)
  shade = np.ones(u.shape, np.float32)
  for s, name in enumerate(SHAPES):
    sel = shape_ids == s
    if sel.any():
      mask[sel] = shape_mask(name, u[sel], v[sel])
  for t, name in enumerate(TEXTURES):
    sel = texture_ids == t
    if sel.any():
      shade[sel] = texture_pattern(name, u[sel], v[sel])
  colour = (class_table["colour"][obj["classes"]] * obj["brightness"][:, None]
            + obj["tint"])[:, None, None, :]
  index = (rows[:, None, None], py[:, :, None] + pad, px[:, None, :] + pad)
  pixels = _as_pixels(canvas)
  painted = _as_pixels(np.ascontiguousarray(colour * shade[..., None],
                                            dtype=np.float32))
  pixels[index] = np.where(mask, painted, pixels[index])


def render(layout: dict, class_table: dict, size: int,
           noise_seed) -> np.ndarray:
  """uint8 [N, size, size, 3] images of `layout` (see `sample_layout`).

  class_table: {"shape": int [C], "texture": int [C], "colour": f32 [C, 3]}.
  noise_seed: entropy for the per-pixel noise (chunk index is appended;
    chunks hold a fixed number of images per size).
  """
  n = layout["classes"].shape[0]
  # Objects near the border paint into a margin that is cropped away.
  pad = int(np.ceil(_EXTENT * 0.22 * size)) + 3
  out = np.empty((n, size, size, 3), np.uint8)
  chunk_size = int(np.clip(_CHUNK_PIXELS // (size * size), 1, 64))
  for chunk, start in enumerate(range(0, n, chunk_size)):
    sl = slice(start, min(n, start + chunk_size))
    m = sl.stop - sl.start
    canvas = np.zeros((m, size + 2 * pad, size + 2 * pad, 3), np.float32)
    _paint_background(canvas, layout, sl, size, pad)
    _paint_objects(canvas, layout, sl, size, pad, class_table)
    img = canvas[:, pad:pad + size, pad:pad + size]
    # Uniform noise of std 0.03, drawn in place (a Gaussian costs 10x here).
    rng = np.random.default_rng([*np.atleast_1d(noise_seed), chunk])
    noise = rng.random(img.shape, dtype=np.float32)
    noise -= 0.5
    noise *= 0.03 * np.sqrt(12.0)
    img += noise
    img *= 255
    np.clip(img, 0, 255, out=img)
    out[sl] = np.rint(img)
  return out
