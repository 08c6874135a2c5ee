"""k-means in JAX with fixed shapes, batched over independent groups.

HST's cross-image transfer needs K prototypes per class from the semantic
features of each class's known-positive training images (hst.md, CST). The
groups (classes) have very different sizes, so points arrive padded to a
common length with a `valid` mask; every function here is jit-able and
`batched_kmeans` vmaps one Lloyd run per group.

`kmeans_by_group` is the host-side driver: it sorts groups by size and runs
them in chunks padded to power-of-two shapes, so memory stays bounded by
`max_chunk_elements` floats and only a handful of shapes compile.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def squared_distances(points, centres):
  """points: [N, d], centres: [K, d] -> [N, K] squared Euclidean distances."""
  sq = (jnp.sum(points ** 2, -1)[:, None] - 2.0 * points @ centres.T
        + jnp.sum(centres ** 2, -1)[None, :])
  return jnp.maximum(sq, 0.0)


def _cycle_valid(order, num_valid, num_clusters):
  """Indices `order[r mod num_valid]` for r < K: repeats when N_valid < K."""
  ranks = jnp.arange(num_clusters)
  return order[jnp.where(num_valid > 0, ranks % jnp.maximum(num_valid, 1),
                         ranks)]


def random_init(points, valid, num_clusters: int, rng):
  """K distinct valid points chosen uniformly (repeated if fewer exist).

  points: [N, d], valid: [N] bool -> centres [K, d].
  """
  n = points.shape[0]
  keys = jnp.where(valid, jax.random.uniform(rng, (n,)), -1.0)
  order = jax.lax.top_k(keys, min(num_clusters, n))[1]
  order = jnp.pad(order, (0, max(0, num_clusters - n)))
  return points[_cycle_valid(order, jnp.sum(valid), num_clusters)]


def kmeans_plus_plus_init(points, valid, num_clusters: int, rng):
  """k-means++ seeding (Arthur & Vassilvitskii 2007) over the valid points.

  Each next centre is drawn with probability proportional to its squared
  distance to the nearest chosen centre; when all remaining distances are
  zero (fewer distinct points than K) the draw falls back to uniform over
  the valid points, so centres repeat rather than land on padding.
  points: [N, d], valid: [N] bool -> centres [K, d].
  """
  n, d = points.shape
  validf = valid.astype(points.dtype)
  rngs = jax.random.split(rng, num_clusters)

  def draw(key, weights):
    # Uniform over valid points when no weight is left; any point if none valid.
    weights = jnp.where(jnp.sum(weights) > 0, weights, validf)
    weights = jnp.where(jnp.sum(weights) > 0, weights, jnp.ones_like(weights))
    return jax.random.categorical(key, jnp.log(weights))

  first = points[draw(rngs[0], validf)]
  centres = jnp.zeros((num_clusters, d), points.dtype).at[0].set(first)
  min_sq = jnp.sum((points - first) ** 2, -1)

  def body(k, carry):
    centres, min_sq = carry
    centre = points[draw(rngs[k], min_sq * validf)]
    min_sq = jnp.minimum(min_sq, jnp.sum((points - centre) ** 2, -1))
    return centres.at[k].set(centre), min_sq

  centres, _ = jax.lax.fori_loop(1, num_clusters, body, (centres, min_sq))
  return centres


def kmeans(points, valid, num_clusters: int, rng, num_iters: int = 30,
           init: str = "kmeans++"):
  """Lloyd's algorithm with a fixed number of iterations.

  Args:
    points: [N, d] float; padding rows are ignored through `valid`.
    valid: [N] bool/0-1.
    num_clusters: K (static).
    rng: PRNG key for the initialisation.
    num_iters: Lloyd iterations (static; no convergence test, fixed shapes).
    init: "kmeans++" | "random".
  Returns:
    centres [K, d] (a cluster that empties keeps its previous centre; with no
    valid point at all every centre is 0) and inertia (scalar, sum of squared
    distances of valid points to their centre).
  """
  points = jnp.asarray(points, jnp.float32)
  valid = jnp.asarray(valid).astype(bool)
  if init == "kmeans++":
    centres = kmeans_plus_plus_init(points, valid, num_clusters, rng)
  elif init == "random":
    centres = random_init(points, valid, num_clusters, rng)
  else:
    raise ValueError(f"k-means init={init!r} is not 'kmeans++' or 'random'.")
  any_valid = jnp.any(valid)
  centres = jnp.where(any_valid, centres, 0.0)
  validf = valid.astype(jnp.float32)

  def step(_, centres):
    assign = jnp.argmin(squared_distances(points, centres), -1)       # [N]
    onehot = jax.nn.one_hot(assign, num_clusters) * validf[:, None]   # [N, K]
    counts = jnp.sum(onehot, 0)                                       # [K]
    sums = onehot.T @ points                                          # [K, d]
    return jnp.where(counts[:, None] > 0,
                     sums / jnp.maximum(counts, 1.0)[:, None], centres)

  centres = jax.lax.fori_loop(0, num_iters, step, centres)
  inertia = jnp.sum(jnp.min(squared_distances(points, centres), -1) * validf)
  return centres, inertia


def batched_kmeans(points, valid, rng, *, num_clusters: int,
                   num_iters: int = 30, init: str = "kmeans++"):
  """One k-means per group, vmapped (jitted).

  points: [G, N, d], valid: [G, N] -> (centres [G, K, d], inertia [G]).
  Group g is seeded with fold_in(rng, g).
  """
  keys = jax.vmap(lambda g: jax.random.fold_in(rng, g))(
      jnp.arange(points.shape[0]))
  return _batched_kmeans(points, valid, keys, num_clusters=num_clusters,
                         num_iters=num_iters, init=init)


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_iters",
                                             "init"))
def _batched_kmeans(points, valid, keys, *, num_clusters, num_iters, init):
  run = functools.partial(kmeans, num_clusters=num_clusters,
                          num_iters=num_iters, init=init)
  return jax.vmap(lambda p, v, r: run(p, v, rng=r))(points, valid, keys)


def _next_pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def kmeans_by_group(points: np.ndarray, group_ids: np.ndarray,
                    num_groups: int, num_clusters: int, rng,
                    num_iters: int = 30, init: str = "kmeans++",
                    max_chunk_elements: int = 1 << 27):
  """k-means separately on each group of a flat host array of points.

  Args:
    points: [M, d] host array (any float dtype; float16 keeps host memory
      small) of all points, in any order.
    group_ids: [M] int in [0, num_groups).
    num_groups: G (classes).
    num_clusters: K per group.
    rng: PRNG key; group g uses fold_in(rng, g), so results do not depend
      on how groups are chunked.
    max_chunk_elements: bound on the padded [G_chunk, N_pad, d] float32
      block sent to the device at once (default 2^27 = 512 MiB).
  Returns:
    centres float32 [num_groups, K, d] (zeros for empty groups) and
    counts int [num_groups] (points per group).
  """
  points = np.asarray(points)
  group_ids = np.asarray(group_ids, np.int64)
  d = points.shape[1]
  counts = np.bincount(group_ids, minlength=num_groups)[:num_groups]
  order = np.argsort(group_ids, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)])
  centres = np.zeros((num_groups, num_clusters, d), np.float32)
  by_size = [int(g) for g in np.argsort(-counts, kind="stable") if counts[g]]
  group_keys = jax.vmap(lambda g: jax.random.fold_in(rng, g))

  i = 0
  while i < len(by_size):
    n_pad = _next_pow2(max(counts[by_size[i]], num_clusters))
    chunk = max(1, min(len(by_size) - i,
                       max_chunk_elements // max(1, n_pad * d)))
    chunk = 1 << (chunk.bit_length() - 1)     # a power of two: few shapes
    members = by_size[i:i + chunk]
    block = np.zeros((chunk, n_pad, d), np.float32)
    valid = np.zeros((chunk, n_pad), bool)
    for row, g in enumerate(members):   # host-side packing, not in jit
      rows = order[starts[g]:starts[g] + counts[g]]
      block[row, :counts[g]] = points[rows]
      valid[row, :counts[g]] = True
    out, _ = _batched_kmeans(
        jnp.asarray(block), jnp.asarray(valid),
        group_keys(jnp.asarray(members, jnp.int32)),
        num_clusters=num_clusters, num_iters=num_iters, init=init)
    centres[members] = np.asarray(out)
    i += chunk
  return centres, counts
