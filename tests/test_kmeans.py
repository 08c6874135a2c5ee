"""k-means in JAX: recovery of separated clusters, padding, chunking."""
import jax
import numpy as np
import pytest

from jaxmlc import kmeans

CENTRES = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, 8.0, 0.0],
                    [0.0, 0.0, 8.0]], np.float32)


def _blobs(seed=0, per=40, centres=CENTRES):
  rng = np.random.default_rng(seed)
  pts = np.concatenate([c + rng.normal(0, 0.3, (per, centres.shape[1]))
                        for c in centres]).astype(np.float32)
  return pts[rng.permutation(len(pts))]


def _assert_matches(found, expected, atol):
  """Each expected centre has its own found centre within atol."""
  found = np.asarray(found, np.float64)
  dist = np.linalg.norm(expected[:, None] - found[None], axis=-1)
  nearest = dist.argmin(1)
  assert len(set(nearest.tolist())) == len(expected), (found, expected)
  assert dist.min(1).max() < atol, (found, expected)


@pytest.mark.parametrize("init,centres", [("kmeans++", CENTRES),
                                          ("random", CENTRES[:2])])
def test_recovers_separated_centres(init, centres):
  # Random seeding can leave two centres in one blob when K > 2 (a true
  # local minimum), so it is checked on two blobs only.
  pts = _blobs(centres=centres)
  # Padding rows far away must be ignored.
  padded = np.concatenate([pts, np.full((20, 3), 100.0, np.float32)])
  valid = np.arange(len(padded)) < len(pts)
  found, inertia = kmeans.kmeans(padded, valid, len(centres),
                                 jax.random.PRNGKey(3), num_iters=20, init=init)
  _assert_matches(found, centres, 0.2)
  # Inertia = sum of squared distances to the true centres (approximately).
  assert float(inertia) < len(pts) * 3 * 0.3 ** 2 * 1.5


def test_fewer_points_than_clusters_and_empty_group():
  pts = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]], np.float32)
  valid = np.array([True, True, False])
  found, _ = kmeans.kmeans(pts, valid, 4, jax.random.PRNGKey(0))
  rows = {tuple(r) for r in np.asarray(found).tolist()}
  assert rows == {(1.0, 2.0), (3.0, 4.0)}          # repeats, never padding
  empty, _ = kmeans.kmeans(pts, np.zeros(3, bool), 2, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(empty), 0.0)


def test_batched_matches_single_and_jit():
  groups = np.stack([_blobs(1), _blobs(2)])
  valid = np.ones(groups.shape[:2], bool)
  rng = jax.random.PRNGKey(7)
  centres, inertia = kmeans.batched_kmeans(groups, valid, rng, num_clusters=4,
                                           num_iters=15)
  assert centres.shape == (2, 4, 3) and inertia.shape == (2,)
  for g in range(2):
    single, _ = kmeans.kmeans(groups[g], valid[g], 4,
                              jax.random.fold_in(rng, g), num_iters=15)
    np.testing.assert_allclose(np.asarray(centres[g]), np.asarray(single),
                               atol=1e-5)


def test_kmeans_by_group_independent_of_chunking():
  a, b = _blobs(4, per=10), _blobs(5, per=25) + 50.0
  points = np.concatenate([a, b]).astype(np.float16)
  ids = np.concatenate([np.full(len(a), 2), np.full(len(b), 0)])
  rng = jax.random.PRNGKey(1)
  big, counts = kmeans.kmeans_by_group(points, ids, 3, 4, rng, num_iters=15)
  small, _ = kmeans.kmeans_by_group(points, ids, 3, 4, rng, num_iters=15,
                                    max_chunk_elements=1)
  np.testing.assert_array_equal(counts, [100, 0, 40])
  np.testing.assert_allclose(big, small, atol=1e-4)
  np.testing.assert_array_equal(big[1], 0.0)
  _assert_matches(big[2], CENTRES, 0.4)
  _assert_matches(big[0], CENTRES + 50.0, 0.4)
