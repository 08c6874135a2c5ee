"""ASGE label embeddings: the fit reaches the graph, compared with numpy."""
import numpy as np
import pytest

from jaxmlc.methods import asge


def block_labels(seed=0, n=600):
  """Labels of 8 classes in two co-occurring groups {0..3}, {4..7} with one
  bridge class (3 also appears with 4): a graph with strong, weak and zero
  edges."""
  rng = np.random.default_rng(seed)
  labels = np.zeros((n, 8), np.uint8)
  group = rng.integers(0, 2, n)
  for i in range(n):
    members = np.arange(4) + 4 * group[i]
    chosen = rng.choice(members, rng.integers(1, 4), replace=False)
    labels[i, chosen] = 1
    if group[i] == 1 and rng.random() < 0.15:
      labels[i, 3] = 1
  return labels


def numpy_adjacency(labels, mask=None):
  """Eq. 1-2 from scratch: A = (P + P^T) / 2, P_ij = count(i, j) / count(i)."""
  y = labels.astype(np.float64) * (1 if mask is None else mask)
  counts = y.T @ y
  occurrences = np.diag(counts)
  p = np.divide(counts, occurrences[:, None],
                out=np.zeros_like(counts), where=occurrences[:, None] > 0)
  return (p + p.T) / 2


def cosine(e):
  unit = e / np.linalg.norm(e, axis=1, keepdims=True)
  return unit @ unit.T


def test_fit_reaches_low_objective_and_tracks_adjacency():
  labels = block_labels()
  a = numpy_adjacency(labels)
  e, history = asge.fit_graph(a, dim=64, steps=1500)
  assert e.shape == (8, 64) and e.dtype == np.float32
  s = cosine(e)
  objective = np.sum((s - a) ** 2)                    # eq. 3, recomputed
  assert history[0] > 1.0 and objective < 1e-3
  assert history[-1] < 1e-2 * history[0]
  off = ~np.eye(8, dtype=bool)
  assert np.corrcoef(s[off], a[off])[0, 1] > 0.99
  np.testing.assert_allclose(s, a, atol=0.03)


def test_fit_label_embeddings_is_deterministic_and_uses_the_mask():
  labels = block_labels()
  one = asge.fit_label_embeddings(labels, dim=32, steps=300, seed=3)
  two = asge.fit_label_embeddings(labels, dim=32, steps=300, seed=3)
  np.testing.assert_array_equal(one, two)
  assert one.shape == (8, 32)
  # Hiding every label of class 0 except where class 1 is present makes
  # P(1 | 0) = 1: the masked graph, not the full one, must be fitted.
  mask = np.ones_like(labels)
  mask[:, 0] = labels[:, 1]
  e = asge.fit_label_embeddings(labels, mask, dim=32, steps=1500)
  a = numpy_adjacency(labels, mask)
  assert a[0, 1] > numpy_adjacency(labels)[0, 1] + 0.1
  np.testing.assert_allclose(cosine(e), a, atol=0.05)


def test_relaxation_only_keeps_weak_edges_weak():
  labels = block_labels()
  a = numpy_adjacency(labels)
  alpha = 0.1
  e, _ = asge.fit_graph(a, dim=64, alpha=alpha, steps=1500)
  s = cosine(e)
  strong = a >= alpha
  np.testing.assert_allclose(s[strong], a[strong], atol=0.05)
  # Weak pairs only have to stay below alpha (eq. 4-5).
  assert np.all(s[~strong] < alpha + 0.02)


def test_bad_graph_shape_is_a_clear_error():
  with pytest.raises(ValueError, match="square adjacency"):
    asge.fit_graph(np.zeros((3, 4)), steps=1)
