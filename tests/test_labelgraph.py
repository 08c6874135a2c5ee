"""jaxmlc.labelgraph against hand-computed graphs and direct counting."""
import numpy as np
import pytest

from jaxmlc import labelgraph

LABELS = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1]], np.float32)


def _random_labels(seed=0, shape=(40, 6)):
  rng = np.random.default_rng(seed)
  labels = (rng.random(shape) < 0.35).astype(np.float32)
  labels[:, 5] = 0                                     # a class never seen
  mask = (rng.random(shape) < 0.8).astype(np.float32)
  return labels, mask


def test_cooccurrence_hand():
  np.testing.assert_array_equal(
      labelgraph.cooccurrence(LABELS), [[2, 1, 0], [1, 2, 1], [0, 1, 1]])
  mask = np.ones_like(LABELS)
  mask[0, 1] = 0                                       # (0, 1) unknown
  np.testing.assert_array_equal(
      labelgraph.cooccurrence(LABELS, mask), [[2, 0, 0], [0, 1, 1], [0, 1, 1]])


def test_cooccurrence_matches_counting():
  labels, mask = _random_labels()
  known = (labels > 0) & (mask > 0)
  num_classes = labels.shape[1]
  expected = np.array([[np.sum(known[:, i] & known[:, j])
                        for j in range(num_classes)]
                       for i in range(num_classes)])
  result = labelgraph.cooccurrence(labels, mask)
  assert result.dtype == np.float64
  np.testing.assert_array_equal(result, expected)


def test_conditional_probability():
  expected = np.array([[1, 0.5, 0], [0.5, 1, 0.5], [0, 1, 1]])
  np.testing.assert_allclose(labelgraph.conditional_probability(LABELS),
                             expected)
  labels, mask = _random_labels(1)
  known = (labels > 0) & (mask > 0)
  probability = labelgraph.conditional_probability(labels, mask)
  # P(L_j | L_i) as an empirical frequency among samples with i known +.
  for i in range(4):
    for j in range(4):
      assert probability[i, j] == pytest.approx(
          known[known[:, i], j].mean())
  np.testing.assert_array_equal(probability[5], 0.0)   # never occurs


def test_symmetric_conditional_adjacency():
  expected = np.array([[1, 0.5, 0], [0.5, 1, 0.75], [0, 0.75, 1]])
  adjacency = labelgraph.symmetric_conditional_adjacency(LABELS)
  np.testing.assert_allclose(adjacency, expected)
  labels, mask = _random_labels(2)
  adjacency = labelgraph.symmetric_conditional_adjacency(labels, mask)
  np.testing.assert_allclose(adjacency, adjacency.T)


def test_reweighted_adjacency_paper():
  P = np.array([[1.0, 0.5, 0.6], [0.45, 1.0, 0.3], [0.05, 0.2, 1.0]])
  # Row 0: two neighbours share p = 0.2; row 1: one; row 2: none.
  expected = np.array([[0.8, 0.1, 0.1], [0.2, 0.8, 0.0], [0.0, 0.0, 0.8]])
  np.testing.assert_allclose(labelgraph.reweighted_adjacency(P, 0.4, 0.2),
                             expected)


def test_reweighted_adjacency_mlgcn_code_variant():
  labels, _ = _random_labels(3)
  P = labelgraph.conditional_probability(labels)
  # ML-GCN's released gen_A, transcribed: zero diagonal, binarise, column
  # normalise with 0.25, add the identity.
  adj = P.copy()
  np.fill_diagonal(adj, 0)
  adj[adj < 0.4] = 0
  adj[adj >= 0.4] = 1
  adj = adj * 0.25 / (adj.sum(0, keepdims=True) + 1e-6)
  adj = adj + np.identity(P.shape[0])
  np.testing.assert_allclose(
      labelgraph.reweighted_adjacency(P, 0.4, 0.25, variant="mlgcn_code"),
      adj)
  with pytest.raises(ValueError, match="variant"):
    labelgraph.reweighted_adjacency(P, variant="code")


def test_gcn_normalize():
  A = np.array([[1.0, 1.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
  d = np.array([2.0, 4.0])
  expected = np.zeros((3, 3))
  expected[:2, :2] = A[:2, :2] / np.sqrt(np.outer(d, d))
  result = labelgraph.gcn_normalize(A)
  np.testing.assert_allclose(result, expected)         # 0-degree row stays 0
  assert np.all(np.isfinite(result))


def test_noise_filtered_adjacency():
  P = np.array([[1.0, 1e-7, 0.5], [0.0, 0.0, 0.0], [0.2, 0.3, 1.0]])
  theta = 1e-6
  expected = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [0.2, 0.3, 1.0]])
  expected /= expected.sum(1, keepdims=True) + theta
  result = labelgraph.noise_filtered_adjacency(P, phi=1e-6, lam=2.0,
                                               theta=theta)
  np.testing.assert_allclose(result, 2.0 * expected)


def test_errors_are_helpful():
  with pytest.raises(ValueError, match="square"):
    labelgraph.gcn_normalize(np.ones((2, 3)))
  with pytest.raises(ValueError, match="mask has shape"):
    labelgraph.cooccurrence(LABELS, np.ones((3, 2)))
  with pytest.raises(ValueError, match=r"\[N, C\]"):
    labelgraph.cooccurrence(np.ones(3))
