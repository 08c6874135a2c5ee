"""Label propagation on a kNN graph (MSCNN sec. III-A; Iscen et al. 2019).

Pseudo labels for unlabeled images from the features of labeled + unlabeled
images, in four pure steps:

1. `knn_graph`: exact k nearest neighbours by blocked search on the
   accelerator. One `lax.scan` over the tiles (i, j), i <= j, of square
   point blocks; each tile is one matmul whose rows serve block i and whose
   columns serve block j (half the flops of a full sweep), reduced by a
   two-stage top-k (group minima, then the k best groups) and merged into
   the blocks' running top-k. The largest intermediate is one [block,
   block] tile (`knn_tile_shape`), never N x N.
2. Edge weights: the heat kernel w(a, b) = exp(-||f_a - f_b||^2 / t), t the
   mean squared kNN distance (`affinity`).
3. Improved propagation (MSCNN eq. 1): the weighted-common-neighbour link
   strength S(a, b) = sum_{c in N(a) & N(b)} w(a, c) + w(c, b) on every kNN
   edge (`wcn_strength`), N(a) being a's k nearest neighbours. The plain
   LPA baseline uses the heat-kernel weights themselves.
4. `propagate`: W = D^-1/2 S_sym D^-1/2 with S_sym = (S + S^T) / 2 (the kNN
   relation is not symmetric; CG needs a symmetric system), then
   (I - alpha W) Z = Y solved per class column by conjugate gradient on a
   sparse matvec (gathers + `segment_sum`, nothing dense).

Then `pseudo_labels` (column-max normalisation over labeled positives,
threshold) and `entropy_confidence` (1 - H(z) / log 2, averaged over
classes). `label_propagation` runs the whole chain.

Sparse graphs are pairs of [N, k] arrays: `indices[a, j]` is a's j-th
neighbour and `values[a, j]` the weight of the directed edge a -> it.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# One kNN tile: 2048 x 2048 floats = 16 MB. Its reductions then run from
# cache; 4096 x 4096 tiles were 1.7x slower end to end on the 2-core CPU box.
DEFAULT_TILE_ELEMENTS = 1 << 22
KNN_GROUP = 16                     # columns per group in the two-stage top-k
METHODS = ("improved", "lpa")
AFFINITIES = ("heat", "connectivity", "cosine_cubed")


# ----------------------------------------------------------------------------
# 1. kNN graph.

def knn_tile_shape(num_points: int, k: int,
                   max_tile_elements: int = DEFAULT_TILE_ELEMENTS
                   ) -> tuple[int, int]:
  """(query_block, database_block) of the blocked search; always square.

  The points are cut into blocks of side sqrt(max_tile_elements) (2048 by
  default), at least k + 1 (a tile's top-k must exist). Tiles are square
  because one tile serves both of its blocks (the distance matrix is
  symmetric). A side of KNN_GROUP * k or more is made a multiple of
  KNN_GROUP (rounded down; a single block is rounded up instead, its
  padding being free), so the two-stage top-k applies; smaller problems
  run as one tile.
  """
  if num_points < k or k < 1:
    raise ValueError(f"knn_tile_shape: need 1 <= k <= N; found N={num_points}"
                     f", k={k}.")
  side = min(num_points, max(k + 1, math.isqrt(max_tile_elements)))
  if side >= KNN_GROUP * k:
    side = (-(-side // KNN_GROUP) * KNN_GROUP if side == num_points
            else side - side % KNN_GROUP)
  return side, side


def _pad_rows(x, rows: int):
  return jnp.pad(x, ((0, rows - x.shape[0]),) + ((0, 0),) * (x.ndim - 1))


def _smallest_k(dot, key, k: int, axis: int):
  """k smallest ranking keys of a tile along `axis`, per slice of the other.

  dot: [B, B] tile of inner products; key(values, pos, query) -> keys maps
  inner products at candidate positions `pos` (along `axis`) for query
  positions `query` (broadcastable ints) to ranking keys (elementwise, so
  XLA fuses it into the reductions instead of writing a distance tile).
  Returns (keys [B, m], candidate positions [B, m]): m candidates per
  query that hold its k smallest (the caller's merge takes the top-k).

  Two stages when B is a multiple of KNN_GROUP with >= k groups: the minima
  of the B / KNN_GROUP groups of KNN_GROUP keys, then the k groups with the
  smallest minima: m = k * KNN_GROUP candidates. Exact: a group left out
  has a minimum >= the k chosen groups' minima, i.e. >= k candidates. One
  lax.top_k over [B, B] costs about as much as the tile's matmul on CPU;
  this costs a min-reduction and a top-k over the group minima. Otherwise
  a plain top-k, m = k.
  """
  size = dot.shape[axis]
  g = KNN_GROUP
  pos = jnp.arange(size)
  if size % g or size // g < k:
    if axis == 1:
      keys = key(dot, pos[None, :], pos[:, None])
    else:
      keys = key(dot, pos[:, None], pos[None, :]).T
    neg, best = lax.top_k(-keys, k)
    return -neg, best
  groups = size // g
  if axis == 1:
    keys = key(dot, pos[None, :], pos[:, None]).reshape(size, groups, g)
    _, sel = lax.top_k(-jnp.min(keys, axis=2), k)            # [Q, k]
    cand_pos = sel[:, :, None] * g + jnp.arange(g)            # [Q, k, g]
    values = jnp.take_along_axis(dot, cand_pos.reshape(size, -1), axis=1)
  else:
    keys = key(dot, pos[:, None], pos[None, :]).reshape(groups, g, size)
    _, sel = lax.top_k(-jnp.min(keys, axis=1).T, k)          # [Q, k]
    cand_pos = sel[:, :, None] * g + jnp.arange(g)            # [Q, k, g]
    values = dot[cand_pos.reshape(size, -1), pos[:, None]]
  cand_pos = cand_pos.reshape(size, -1)
  return key(values, cand_pos, pos[:, None]), cand_pos


@functools.partial(jax.jit, static_argnames=("k", "block", "exclude_self"))
def _knn_blocked(features, k, block, exclude_self):
  """Scan over the tiles (i, j), i <= j, of `block`-point blocks.

  Tile (i, j) gives block i's candidates among block j (its rows) and,
  for i < j, block j's among block i (its columns), so the distance
  matrix's matmuls are done once per unordered pair: half the flops of a
  query-block x database-block sweep. Each block's running top-k [B, k]
  lives in the scan carry and is merged at indices i and j. Candidates are
  ranked by ||x||^2 - 2 <q, x> (the query's own norm is the same for all
  of them); squared distances are formed for the candidates only.
  """
  n, dim = features.shape
  num = -(-n // block)
  x = _pad_rows(features, num * block).reshape(num, block, dim)
  norms = jnp.sum(x * x, axis=2)                                  # [nb, B]
  ids = jnp.arange(num * block).reshape(num, block)
  # Padded points are never candidates.
  bias = jnp.where(ids < n, norms, jnp.inf)
  pi, pj = np.triu_indices(num)
  pairs = (jnp.asarray(pi, jnp.int32), jnp.asarray(pj, jnp.int32))

  def merge(best, at, cand_key, cand_pos):
    best_dist, best_ids = best                                    # [nb, B, k]
    d = jnp.concatenate([best_dist[at], cand_key], axis=1)        # [B, k + m]
    i = jnp.concatenate([best_ids[at], cand_pos], axis=1)
    neg, pos = lax.top_k(-d, k)
    return (best_dist.at[at].set(-neg),
            best_ids.at[at].set(jnp.take_along_axis(i, pos, axis=1)))

  def tile(best, pair):
    i, j = pair
    dot = jnp.matmul(x[i], x[j].T, precision=lax.Precision.HIGHEST)  # [B, B]
    same = (i == j) & exclude_self

    def keyed(b_cand):
      def key(values, pos, query):
        out = b_cand[pos] - 2 * values
        return jnp.where(same & (pos == query), jnp.inf, out)
      return key

    row_key, row_pos = _smallest_k(dot, keyed(bias[j]), k, axis=1)
    col_key, col_pos = _smallest_k(dot, keyed(bias[i]), k, axis=0)
    # Keys -> squared distances (clamped: rounding can dip below 0).
    row_dist = jnp.maximum(row_key + norms[i][:, None], 0.0)
    col_dist = jnp.maximum(col_key + norms[j][:, None], 0.0)
    best = merge(best, i, row_dist, ids[j][row_pos])
    # A diagonal tile's columns repeat its rows: contribute nothing.
    best = merge(best, j, jnp.where(i == j, jnp.inf, col_dist),
                 ids[i][col_pos])
    return best, None

  init = (jnp.full((num, block, k), jnp.inf, features.dtype),
          jnp.full((num, block, k), -1, ids.dtype))
  (dist, nbrs), _ = lax.scan(tile, init, pairs)
  return (nbrs.reshape(-1, k)[:n].astype(jnp.int32),
          dist.reshape(-1, k)[:n])


def knn_graph(features, k: int = 10, exclude_self: bool = True,
              max_tile_elements: int = DEFAULT_TILE_ELEMENTS):
  """Exact k nearest neighbours (squared Euclidean), blocked.

  Args:
    features: [N, D] float (MSCNN: L2-normalised image features).
    k: neighbours per point.
    exclude_self: leave each point out of its own list.
    max_tile_elements: size of the largest intermediate, one [block,
      block] tile of inner products (`knn_tile_shape`).
  Returns:
    (indices int32 [N, k], squared distances float [N, k]), nearest first.
  """
  features = jnp.asarray(features, jnp.float32)
  if features.ndim != 2:
    raise ValueError(f"knn_graph: expected features [N, D]; found shape "
                     f"{features.shape}.")
  n = features.shape[0]
  if n <= k if exclude_self else n < k:
    raise ValueError(f"knn_graph: need more points than neighbours; found "
                     f"N={n} points for k={k}. Fix: lower k.")
  block, _ = knn_tile_shape(n, k, max_tile_elements)
  return _knn_blocked(features, k=k, block=block, exclude_self=exclude_self)


# ----------------------------------------------------------------------------
# 2. Edge weights.

def affinity(sq_distances, kind: str = "heat", t=None):
  """Edge weights [N, k] from squared kNN distances [N, k].

  "heat": exp(-d / t), t = mean squared kNN distance unless given.
  "connectivity": 1 on every edge (scikit-learn's kernel="knn").
  "cosine_cubed": max(cos, 0)^3 with cos = 1 - d / 2, Iscen et al.'s
    similarity (valid for L2-normalised features).
  """
  d = jnp.asarray(sq_distances, jnp.float32)
  if kind == "heat":
    t = jnp.mean(d) if t is None else jnp.asarray(t, jnp.float32)
    return jnp.exp(-d / jnp.maximum(t, 1e-12))
  if kind == "connectivity":
    return jnp.ones_like(d)
  if kind == "cosine_cubed":
    return jnp.maximum(1.0 - d / 2.0, 0.0) ** 3
  raise ValueError(f"affinity kind={kind!r}; expected one of {AFFINITIES}.")


# ----------------------------------------------------------------------------
# 3. Weighted-common-neighbour link strength (eq. 1).

@functools.partial(jax.jit, static_argnames=("block_rows",))
def _wcn(indices, weights, block_rows):
  n, k = indices.shape
  blocks = -(-n // block_rows)
  idx_a = _pad_rows(indices, blocks * block_rows)
  w_a = _pad_rows(weights, blocks * block_rows)

  def rows(args):
    ia, wa = args                        # [R, k]: N(a), w(a, c)
    ib, wb = indices[ia], weights[ia]    # [R, k, k]: N(b), w(b, c), b = ia
    # same[r, j, p, q]: a's p-th neighbour is b_j's q-th neighbour (= c).
    same = ia[:, None, :, None] == ib[:, :, None, :]
    terms = wa[:, None, :, None] + wb[:, :, None, :]
    return jnp.sum(jnp.where(same, terms, 0.0), axis=(2, 3))

  out = lax.map(rows, (idx_a.reshape(blocks, block_rows, k),
                       w_a.reshape(blocks, block_rows, k)))
  return out.reshape(-1, k)[:n]


def wcn_strength(indices, weights, max_block_elements: int = 1 << 22):
  """MSCNN eq. 1 on every kNN edge: S(a, b) = sum_{c in N(a) & N(b)}
  w(a, c) + w(c, b), with N(a) the row `indices[a]`.

  w(c, b) is read from b's row (the heat kernel is symmetric). An edge
  whose ends share no neighbour gets strength 0.

  Args:
    indices: int [N, k], a's neighbours (no self, no repeats).
    weights: float [N, k], w(a, indices[a, j]).
    max_block_elements: rows are processed in blocks whose [R, k, k, k]
      comparison holds at most this many entries.
  Returns:
    float32 [N, k], S(a, indices[a, j]).
  """
  indices = jnp.asarray(indices, jnp.int32)
  weights = jnp.asarray(weights, jnp.float32)
  if indices.ndim != 2 or weights.shape != indices.shape:
    raise ValueError(f"wcn_strength: expected indices and weights [N, k] of "
                     f"one shape; found {indices.shape} and {weights.shape}.")
  n, k = indices.shape
  block = int(max(1, min(n, max_block_elements // max(k ** 3, 1))))
  return _wcn(indices, weights, block_rows=block)


# ----------------------------------------------------------------------------
# 4. Symmetric normalisation and the CG solve.

def symmetric_degree(indices, values):
  """Row sums [N] of S_sym = (S + S^T) / 2 for a sparse [N, k] graph."""
  n = indices.shape[0]
  incoming = jax.ops.segment_sum(values.reshape(-1), indices.reshape(-1),
                                 num_segments=n)
  return 0.5 * (jnp.sum(values, axis=1) + incoming)


def normalized_matvec(indices, values):
  """x [N, C] -> W x, W = D^-1/2 S_sym D^-1/2 (0-degree rows stay 0)."""
  n = indices.shape[0]
  degree = symmetric_degree(indices, values)
  scale = jnp.where(degree > 0, lax.rsqrt(jnp.maximum(degree, 1e-30)), 0.0)
  flat_idx = indices.reshape(-1)

  def matvec(x):
    y = x * scale[:, None]
    forward = jnp.einsum("nk,nkc->nc", values, y[indices])        # S y
    backward = jax.ops.segment_sum(                                # S^T y
        (values[:, :, None] * y[:, None, :]).reshape(-1, y.shape[1]),
        flat_idx, num_segments=n)
    return 0.5 * (forward + backward) * scale[:, None]

  return matvec


def conjugate_gradient(matvec, b, iterations: int, tol: float = 0.0):
  """Solves A x = b for each column of b [N, C] independently (A SPD).

  At most `iterations` steps; a column stops when its residual norm is
  <= tol * ||b_c|| (tol = 0: exactly `iterations` steps, as Iscen et al.).
  """
  b_norm2 = jnp.sum(b * b, axis=0)
  tiny = jnp.finfo(b.dtype).tiny

  def active(rs):
    return rs > (tol * tol) * b_norm2

  def body(carry):
    i, x, r, p, rs = carry
    on = active(rs) & (rs > 0)
    ap = matvec(p)
    step = jnp.where(on, rs / jnp.maximum(jnp.sum(p * ap, axis=0), tiny), 0.0)
    x = x + step * p
    r = r - step * ap
    rs_new = jnp.sum(r * r, axis=0)
    beta = jnp.where(on, rs_new / jnp.maximum(rs, tiny), 0.0)
    p = jnp.where(on, r + beta * p, p)
    return i + 1, x, r, p, jnp.where(on, rs_new, rs)

  def cond(carry):
    i, _, _, _, rs = carry
    return (i < iterations) & jnp.any(active(rs) & (rs > 0))

  init = (0, jnp.zeros_like(b), b, b, b_norm2)
  _, x, _, _, _ = lax.while_loop(cond, body, init)
  return x


@functools.partial(jax.jit, static_argnames=("iterations",))
def propagate(indices, values, labels, alpha: float = 0.99,
              iterations: int = 20, tol: float = 0.0):
  """Solves (I - alpha W) Z = Y per class column by conjugate gradient.

  Args:
    indices: int [N, k] sparse graph (kNN lists).
    values: float [N, k] edge strengths S (WCN for the improved variant,
      heat-kernel weights for plain LPA); symmetrised as (S + S^T) / 2
      and normalised as D^-1/2 S_sym D^-1/2.
    labels: float [N, C], Y: known positives, zero rows for unlabeled.
    alpha: in [0, 1).
    iterations: CG steps (Iscen et al.: 20).
    tol: relative residual at which a column stops early.
  Returns:
    Z float32 [N, C].
  """
  values = jnp.asarray(values, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  w = normalized_matvec(jnp.asarray(indices, jnp.int32), values)
  return conjugate_gradient(lambda x: x - alpha * w(x), labels, iterations,
                            tol)


# ----------------------------------------------------------------------------
# Pseudo labels and confidence.

def pseudo_labels(scores, labels, mask=None, threshold: float = 0.5):
  """Multi-hot pseudo labels from propagated scores.

  Each class column is divided by its maximum over the labeled positives
  (rows where labels * mask = 1); entries >= threshold are positive.
  Classes with no labeled positive get no pseudo positive.

  Args:
    scores: [N, C] Z from `propagate`.
    labels: [N, C] in {0, 1}; mask: [N, C] known entries (None: all).
  Returns:
    (pseudo float32 [N, C] in {0, 1}, normalised scores float32 [N, C]
    clipped to [0, 1]).
  """
  scores = jnp.asarray(scores, jnp.float32)
  positive = jnp.asarray(labels, jnp.float32)
  if mask is not None:
    positive = positive * jnp.asarray(mask, jnp.float32)
  column_max = jnp.max(jnp.where(positive > 0, scores, -jnp.inf), axis=0)
  ok = jnp.isfinite(column_max) & (column_max > 0)
  normalized = jnp.where(ok, scores / jnp.where(ok, column_max, 1.0), 0.0)
  normalized = jnp.clip(normalized, 0.0, 1.0)
  return (normalized >= threshold).astype(jnp.float32), normalized


def entropy_confidence(normalized):
  """[N, C] scores in [0, 1] -> [N] mean over classes of 1 - H(z) / log 2."""
  z = jnp.clip(jnp.asarray(normalized, jnp.float32), 0.0, 1.0)
  entropy = -(jax.scipy.special.xlogy(z, z)
              + jax.scipy.special.xlogy(1.0 - z, 1.0 - z))
  return jnp.mean(1.0 - entropy / math.log(2.0), axis=-1)


def label_propagation(features, labels, mask=None, *, method: str = "improved",
                      k: int = 10, alpha: float = 0.99, iterations: int = 20,
                      tol: float = 0.0, threshold: float = 0.5,
                      kind: str = "heat", normalize: bool = True,
                      degree_correction: bool = False,
                      max_tile_elements: int = DEFAULT_TILE_ELEMENTS) -> dict:
  """The whole chain: features -> graph -> Z -> pseudo labels, confidence.

  Args:
    features: [N, D] of labeled + unlabeled samples.
    labels: [N, C] known multi-hot labels (zero rows for unlabeled).
    mask: [N, C] known entries (None: all of `labels` is known).
    method: "improved" (WCN strength, eq. 1) or "lpa" (plain weights).
    kind: edge weights (`affinity`); normalize: L2-normalise features first.
    degree_correction: threshold D^-1/2 Z instead of Z. With the symmetric
      normalisation Z grows like sqrt(degree) inside a cluster, so the
      column-max rule drops low-degree points; D^-1/2 Z removes that bias
      (not in the paper; off by default).
  Returns:
    {"indices", "weights", "strength" [N, k], "scores" Z [N, C],
     "normalized" [N, C], "pseudo_labels" [N, C], "confidence" [N]}
    as jax arrays.
  """
  if method not in METHODS:
    raise ValueError(f"label_propagation method={method!r}; expected one of "
                     f"{METHODS}.")
  features = jnp.asarray(features, jnp.float32)
  if normalize:
    features = features / jnp.maximum(
        jnp.linalg.norm(features, axis=1, keepdims=True), 1e-12)
  labels = jnp.asarray(labels, jnp.float32)
  known = labels if mask is None else labels * jnp.asarray(mask, jnp.float32)
  indices, sq_dist = knn_graph(features, k, max_tile_elements=max_tile_elements)
  weights = affinity(sq_dist, kind)
  strength = wcn_strength(indices, weights) if method == "improved" else weights
  scores = propagate(indices, strength, known, alpha, iterations, tol)
  ranked = scores
  if degree_correction:
    degree = symmetric_degree(indices, strength)
    ranked = scores * jnp.where(degree > 0, lax.rsqrt(
        jnp.maximum(degree, 1e-30)), 0.0)[:, None]
  pseudo, normalized = pseudo_labels(ranked, known, None, threshold)
  return {"indices": indices, "weights": weights, "strength": strength,
          "scores": scores, "normalized": normalized,
          "pseudo_labels": pseudo,
          "confidence": entropy_confidence(normalized)}


__all__ = ["AFFINITIES", "METHODS", "affinity", "conjugate_gradient",
           "entropy_confidence", "knn_graph", "knn_tile_shape",
           "label_propagation", "normalized_matvec", "propagate",
           "pseudo_labels", "symmetric_degree", "wcn_strength"]
