"""jaxmlc.propagation against brute force, numpy loops and scikit-learn."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.semi_supervised import LabelSpreading

from jaxmlc import propagation


def _points(n=60, d=5, seed=0):
  return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _brute_knn(x, k):
  x = x.astype(np.float64)
  d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  np.fill_diagonal(d2, np.inf)
  order = np.argsort(d2, axis=1, kind="stable")[:, :k]
  return order, np.take_along_axis(d2, order, axis=1)


# ------------------------------------------------------------------ kNN ----

@pytest.mark.parametrize("tile", [1 << 24, 700])
def test_knn_equals_brute_force(tile):
  x = _points(n=97, d=6)
  k = 7
  indices, dist = propagation.knn_graph(x, k, max_tile_elements=tile)
  expected_idx, expected_dist = _brute_knn(x, k)
  np.testing.assert_array_equal(np.asarray(indices), expected_idx)
  np.testing.assert_allclose(np.asarray(dist), expected_dist, rtol=1e-4,
                             atol=1e-5)


def test_knn_many_tiles_with_padding():
  # 613 points in 8 x 3 tiles that do not divide N: merging across tiles and
  # masking the padded rows must still give the exact answer.
  x = _points(n=613, d=3, seed=1)
  indices, _ = propagation.knn_graph(x, 5, max_tile_elements=12 * 256)
  q, db = propagation.knn_tile_shape(613, 5, 12 * 256)
  assert q < 613 and db < 613 and 613 % q and 613 % db
  np.testing.assert_array_equal(np.asarray(indices), _brute_knn(x, 5)[0])


def test_knn_two_stage_top_k_over_many_blocks():
  # Blocks of 64 (a multiple of KNN_GROUP with >= k groups) take the
  # group-minimum path; 700 points leave a padded last block; both the row
  # and the column (transposed) halves of the symmetric sweep are used.
  x = _points(n=700, d=6, seed=2)
  block, _ = propagation.knn_tile_shape(700, 3, 64 * 64)
  assert block == 64 and block % propagation.KNN_GROUP == 0 and 700 % block
  indices, dist = propagation.knn_graph(x, 3, max_tile_elements=64 * 64)
  expected_idx, expected_dist = _brute_knn(x, 3)
  np.testing.assert_array_equal(np.asarray(indices), expected_idx)
  np.testing.assert_allclose(np.asarray(dist), expected_dist, rtol=1e-4,
                             atol=1e-5)


def test_knn_single_block_rounded_up_and_self_kept():
  # One block of 208 > 200 points (rounded up to KNN_GROUP; the padding
  # must never be a neighbour), with and without the point itself.
  x = _points(n=200, d=4, seed=7)
  assert propagation.knn_tile_shape(200, 3) == (208, 208)
  indices, _ = propagation.knn_graph(x, 3)
  np.testing.assert_array_equal(np.asarray(indices), _brute_knn(x, 3)[0])
  with_self, dist = propagation.knn_graph(x, 4, exclude_self=False)
  np.testing.assert_array_equal(np.asarray(with_self)[:, 0], np.arange(200))
  np.testing.assert_array_equal(np.asarray(with_self)[:, 1:],
                                _brute_knn(x, 3)[0])
  np.testing.assert_allclose(np.asarray(dist)[:, 0], 0.0, atol=1e-5)


def test_knn_duplicates_give_exact_distances():
  # Every point twice (ties everywhere): which copy comes first may differ
  # from a stable sort, the distances may not; the twin is at distance 0.
  base = _points(n=150, d=3, seed=8)
  x = np.concatenate([base, base])
  _, dist = propagation.knn_graph(x, 3, max_tile_elements=48 * 48)
  np.testing.assert_allclose(np.asarray(dist), _brute_knn(x, 3)[1],
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dist)[:, 0], 0.0, atol=1e-5)


def test_knn_keeps_self_when_asked():
  x = _points(n=20, d=3)
  indices, dist = propagation.knn_graph(x, 3, exclude_self=False)
  np.testing.assert_array_equal(np.asarray(indices)[:, 0], np.arange(20))
  np.testing.assert_allclose(np.asarray(dist)[:, 0], 0.0, atol=1e-5)


def test_knn_too_few_points_is_a_clear_error():
  with pytest.raises(ValueError, match="lower k"):
    propagation.knn_graph(_points(n=5), k=5)


def _all_avals(jaxpr):
  """Every intermediate shape in a jaxpr, sub-jaxprs (scan, map, jit) included."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      yield v.aval.shape
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (list, tuple)) else [value]):
        if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
          yield from _all_avals(sub)


def test_blocked_search_never_builds_n_by_n():
  n, k = 30_000, 10
  query, database = propagation.knn_tile_shape(n, k)
  assert query * database <= propagation.DEFAULT_TILE_ELEMENTS < n * n
  spec = jax.ShapeDtypeStruct((n, 8), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda f: propagation.knn_graph(f, k))(spec)
  largest = max(int(np.prod(s)) for s in _all_avals(jaxpr))
  assert largest <= query * database * 2 < n * n   # the tile (x2: top-k merge)
  # ... and the tile really is the search's working set.
  shapes = set(_all_avals(jaxpr))
  assert (query, database) in shapes


# ------------------------------------------------------------------ WCN ----

def test_wcn_strength_equals_numpy_loop():
  x = _points(n=14, d=2, seed=3)
  k = 4
  # Independent derivation: dense heat kernel from the points, neighbour
  # sets from brute force, eq. 1 summed in plain Python.
  nbrs, d2_knn = _brute_knn(x, k)
  t = d2_knn.mean()
  dense = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / t)
  expected = np.zeros((14, k))
  for a in range(14):
    for j, b in enumerate(nbrs[a]):
      for c in set(nbrs[a]) & set(nbrs[b]):
        expected[a, j] += dense[a, c] + dense[c, b]
  indices, d2 = propagation.knn_graph(x, k)
  weights = propagation.affinity(d2, "heat")
  strength = propagation.wcn_strength(indices, weights)
  np.testing.assert_allclose(np.asarray(strength), expected, rtol=1e-4,
                             atol=1e-6)
  # Row blocks that do not divide N give the same answer.
  np.testing.assert_allclose(
      np.asarray(propagation.wcn_strength(indices, weights,
                                          max_block_elements=3 * k ** 3)),
      expected, rtol=1e-4, atol=1e-6)


def test_wcn_hand_case():
  # Triangle 0-1-2 with w(0,1)=1, w(0,2)=2, w(1,2)=3, and a pair 3-4 whose
  # lists share nothing with each other: S(0,1) = w(0,2) + w(2,1) = 5, ...
  indices = np.array([[1, 2], [0, 2], [0, 1], [4, 2], [3, 0]])
  weights = np.array([[1, 2], [1, 3], [2, 3], [1, 1], [1, 1]], np.float32)
  s = np.asarray(propagation.wcn_strength(indices, weights))
  np.testing.assert_allclose(s, [[5, 4], [5, 3], [4, 3], [0, 0], [0, 0]])


# ------------------------------------------------------- propagation ----

def test_conjugate_gradient_matches_direct_solve():
  rng = np.random.default_rng(0)
  m = rng.normal(size=(12, 12))
  a = m @ m.T + 12 * np.eye(12)
  b = rng.normal(size=(12, 3))
  x = propagation.conjugate_gradient(lambda v: jnp.asarray(a, jnp.float32) @ v,
                                     jnp.asarray(b, jnp.float32), 100, 1e-7)
  np.testing.assert_allclose(np.asarray(x), np.linalg.solve(a, b), rtol=1e-4,
                             atol=1e-5)


def _sklearn_distributions(x, y, kernel, alpha=0.99, n_neighbors=7):
  model = LabelSpreading(kernel=kernel, alpha=alpha, n_neighbors=n_neighbors,
                         max_iter=20000, tol=1e-12)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model.fit(x, y)
  return model.label_distributions_


def _ours_distributions(indices, values, y, num_classes, alpha=0.99):
  labels = np.zeros((len(y), num_classes), np.float32)
  labels[y >= 0, y[y >= 0]] = 1
  z = np.asarray(propagation.propagate(indices, values, labels, alpha,
                                       iterations=3000, tol=1e-7),
                 np.float64)
  return z / z.sum(axis=1, keepdims=True)


def test_plain_lpa_matches_sklearn_knn_kernel_on_a_ring():
  # Points evenly spaced on a circle: the 5-NN relation (self + 2 each side)
  # is symmetric, so scikit-learn's knn connectivity graph (self loops,
  # in-degree normalisation, diagonal zeroed) is exactly our symmetric
  # connectivity graph with k = 4.
  n = 40
  angle = 2 * np.pi * np.arange(n) / n
  x = np.stack([np.cos(angle), np.sin(angle)], 1)
  y = -np.ones(n, int)
  y[[0, 13, 27]] = [0, 1, 2]
  y[5] = 0
  expected = _sklearn_distributions(x, y, "knn", n_neighbors=5)
  indices, d2 = propagation.knn_graph(x, 4)
  ours = _ours_distributions(indices, propagation.affinity(d2, "connectivity"),
                             y, 3)
  np.testing.assert_allclose(ours, expected, atol=2e-4)


def test_plain_lpa_matches_sklearn_on_heat_kernel_graph():
  # A generic (asymmetric) heat-kernel kNN graph, symmetrised by us; the same
  # affinity handed to LabelSpreading as a kernel checks normalisation and
  # alpha exactly on a connected irregular graph.
  x = _points(n=50, d=3, seed=4)
  indices, d2 = propagation.knn_graph(x, 6)
  weights = np.asarray(propagation.affinity(d2, "heat"), np.float64)
  dense = np.zeros((50, 50))
  rows = np.repeat(np.arange(50), 6)
  np.add.at(dense, (rows, np.asarray(indices).ravel()), weights.ravel())
  dense = (dense + dense.T) / 2
  y = -np.ones(50, int)
  y[:8] = np.arange(8) % 3
  expected = _sklearn_distributions(x, y, lambda a, b: dense)
  ours = _ours_distributions(indices, weights, y, 3)
  np.testing.assert_allclose(ours, expected, atol=2e-4)


def test_propagate_equals_dense_solve():
  x = _points(n=30, d=3, seed=5)
  indices, d2 = propagation.knn_graph(x, 5)
  values = np.asarray(propagation.wcn_strength(
      indices, propagation.affinity(d2, "heat")), np.float64)
  s = np.zeros((30, 30))
  np.add.at(s, (np.repeat(np.arange(30), 5), np.asarray(indices).ravel()),
            values.ravel())
  s = (s + s.T) / 2
  deg = s.sum(1)
  inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-300)), 0)
  w = inv[:, None] * s * inv[None]
  y = np.zeros((30, 2))
  y[[0, 3], 0] = 1
  y[[1, 7, 9], 1] = 1
  expected = np.linalg.solve(np.eye(30) - 0.9 * w, y)
  z = propagation.propagate(indices, values, y, 0.9, iterations=500, tol=1e-7)
  np.testing.assert_allclose(np.asarray(z), expected, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------- pseudo labels ----

def test_pseudo_labels_hand_case():
  scores = np.array([[4.0, 0.0], [2.0, 1.0], [1.0, 3.0], [2.5, 0.2]])
  labels = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
  pseudo, normalized = propagation.pseudo_labels(scores, labels)
  # Class 0: column max over labeled positives = 4; class 1 has none.
  np.testing.assert_allclose(np.asarray(normalized)[:, 0],
                             [1.0, 0.5, 0.25, 0.625])
  np.testing.assert_array_equal(np.asarray(pseudo),
                                [[1, 0], [1, 0], [0, 0], [1, 0]])
  np.testing.assert_array_equal(np.asarray(normalized)[:, 1], 0)


def test_entropy_confidence():
  z = np.array([[0.0, 1.0], [0.5, 0.5], [0.5, 1.0], [0.2, 0.9]])
  h = lambda p: -(p * np.log(p) + (1 - p) * np.log(1 - p))
  expected = [1.0, 0.0, 0.5,
              np.mean([1 - h(0.2) / np.log(2), 1 - h(0.9) / np.log(2)])]
  np.testing.assert_allclose(np.asarray(propagation.entropy_confidence(z)),
                             expected, rtol=1e-5, atol=1e-6)


def test_label_propagation_recovers_clusters():
  # Two well separated blobs, 8 labels each. With the degree correction
  # (D^-1/2 Z) both variants label every point of a blob with its class;
  # the literal column-max rule loses low-degree points (Z ~ sqrt(degree)).
  rng = np.random.default_rng(6)
  x = np.concatenate([rng.normal(0, 0.1, (40, 4)) + [3, 0, 0, 0],
                      rng.normal(0, 0.1, (40, 4)) - [3, 0, 0, 0]])
  labels = np.zeros((80, 2), np.float32)
  labels[0:40:5, 0] = 1
  labels[40:80:5, 1] = 1
  truth = np.repeat(np.eye(2), 40, axis=0)
  for method in propagation.METHODS:
    out = propagation.label_propagation(x, labels, method=method, k=6,
                                        normalize=False, iterations=100,
                                        degree_correction=True)
    np.testing.assert_array_equal(np.asarray(out["pseudo_labels"]), truth)
    conf = np.asarray(out["confidence"])
    assert conf.shape == (80,) and np.all((conf >= 0) & (conf <= 1))
    literal = propagation.label_propagation(x, labels, method=method, k=6,
                                            normalize=False, iterations=100)
    # The literal rule may miss points but never labels across blobs.
    assert np.asarray(literal["pseudo_labels"])[truth == 0].sum() == 0
