"""Label statistics -> label graphs (contract: specs/core_math.md).

Inputs are numpy label matrices `labels` [N, C] in {0, 1} with an optional
`mask` [N, C] (1 = label known); outputs are numpy float64 [C, C].
"""
from __future__ import annotations

import numpy as np


def _check_square(fn, matrix):
  matrix = np.asarray(matrix, np.float64)
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
    raise ValueError(
        f"{fn}: expected a square [C, C] matrix, got shape {matrix.shape}. "
        "Fix: pass a label graph such as conditional_probability(labels).")
  return matrix


def cooccurrence(labels, mask=None) -> np.ndarray:
  """M = Y^T Y over the known positives, Y = labels * mask.

  Args:
    labels: [N, C] in {0, 1}; mask: optional [N, C], 1 = known.
  Returns:
    [C, C] float64: M_ij = #samples where i and j are both known positives;
    M_ii = #known positives of class i.
  """
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(
        f"cooccurrence: labels must be [N, C], got shape {labels.shape}. "
        "Fix: one multi-hot row per sample.")
  # float32 products of 0/1 sum exactly up to 2**24 samples; BLAS is much
  # faster in float32.
  dtype = np.float32 if labels.shape[0] < 2**24 else np.float64
  known = labels.astype(dtype)
  if mask is not None:
    mask = np.asarray(mask)
    if mask.shape != labels.shape:
      raise ValueError(
          f"cooccurrence: mask has shape {mask.shape}, expected "
          f"{labels.shape} (the shape of labels). Fix: pass a [N, C] 0/1 "
          "mask, or None.")
    known = known * mask.astype(dtype)
  return (known.T @ known).astype(np.float64)


def conditional_probability(labels, mask=None) -> np.ndarray:
  """P_ij = P(L_j | L_i) = M_ij / M_ii; rows of classes never seen are 0.

  Args:
    labels: [N, C] in {0, 1}; mask: optional [N, C], 1 = known.
  Returns:
    [C, C] float64 with ones on the diagonal of classes that occur.
  """
  counts = cooccurrence(labels, mask)
  occurrences = np.diag(counts)[:, None]
  return np.divide(counts, occurrences, out=np.zeros_like(counts),
                   where=occurrences > 0)


def symmetric_conditional_adjacency(labels, mask=None) -> np.ndarray:
  """ASGE eq. 2: A = (P + P^T) / 2 with P = conditional_probability.

  Returns:
    [C, C] float64, symmetric.
  """
  probability = conditional_probability(labels, mask)
  return 0.5 * (probability + probability.T)


def reweighted_adjacency(P, tau=0.4, p=0.2, variant="paper") -> np.ndarray:
  """DMACN eq. 12 / ML-GCN eq. 7-8: binarise, then re-weight the graph.

  variant="paper" (the default; ML-GCN's paper and the DMACN seed):
  off-diagonal B_ij = [P_ij >= tau]; row i's ones share weight p equally
  (p / row count; a row without neighbours stays 0 off the diagonal); the
  diagonal is 1 - p, so a node keeps 1 - p of its own feature.

  variant="mlgcn_code" (ML-GCN's released `gen_A`, which differs from its
  paper): B as above, then B_ij * p / (sum_i B_ij + 1e-6) (column sums) plus
  the identity. The released code uses p=0.25.

  Args:
    P: [C, C] conditional probabilities P(L_j | L_i).
    tau: binarisation threshold.
    p: weight given to the neighbours.
    variant: "paper" | "mlgcn_code".
  Returns:
    [C, C] float64.
  """
  P = _check_square("reweighted_adjacency", P)
  off_diagonal = ~np.eye(P.shape[0], dtype=bool)
  binary = ((P >= tau) & off_diagonal).astype(np.float64)
  if variant == "paper":
    neighbours = binary.sum(axis=1, keepdims=True)
    adjacency = np.divide(p * binary, neighbours,
                          out=np.zeros_like(binary), where=neighbours > 0)
    np.fill_diagonal(adjacency, 1.0 - p)
    return adjacency
  if variant == "mlgcn_code":
    adjacency = binary * p / (binary.sum(axis=0, keepdims=True) + 1e-6)
    return adjacency + np.eye(P.shape[0])
  raise ValueError(
      f"reweighted_adjacency: variant={variant!r}, expected 'paper' or "
      "'mlgcn_code'. Fix: 'paper' follows ML-GCN's paper and DMACN; "
      "'mlgcn_code' reproduces ML-GCN's released gen_A.")


def gcn_normalize(A) -> np.ndarray:
  """D^-1/2 A D^-1/2 with D the row sums; rows/columns of degree <= 0 are 0.

  What ML-GCN feeds its GCN layers.

  Args:
    A: [C, C] non-negative adjacency.
  Returns:
    [C, C] float64.
  """
  A = _check_square("gcn_normalize", A)
  degree = A.sum(axis=1)
  inverse_sqrt = np.divide(1.0, np.sqrt(np.maximum(degree, 0.0)),
                           out=np.zeros_like(degree), where=degree > 0)
  return inverse_sqrt[:, None] * A * inverse_sqrt[None, :]


def noise_filtered_adjacency(P, phi=1e-6, lam=1.0, theta=1e-6) -> np.ndarray:
  """MSCNN eq. 8: drop entries below phi, then row-normalise.

  M_ij = 0 if P_ij < phi, else lam * P_ij / (sum_j P_ij + theta), where the
  row sum runs over the kept entries (the filtered matrix is what gets
  normalised; with phi = 1e-6 the difference from the raw sum is < C phi).

  Args:
    P: [C, C] conditional probabilities.
    phi: noise cut-off; lam: scale; theta: keeps all-zero rows finite.
  Returns:
    [C, C] float64.
  """
  P = _check_square("noise_filtered_adjacency", P)
  kept = np.where(P < phi, 0.0, P)
  return lam * kept / (kept.sum(axis=1, keepdims=True) + theta)
