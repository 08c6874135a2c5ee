"""ASGE: adjacency-based similarity graph embedding of the labels (CMA sec. 3.1).

Label vectors whose cosine matrix fits the label graph, for any method that
needs word vectors and has none (CMA, HST, MSCNN):

1. Graph (eq. 1-2): A = labelgraph.symmetric_conditional_adjacency(labels),
   the symmetrised conditional probabilities P(i | j).
2. Network Phi: the one-hot class index -> 3 x (Dense 256 -> BatchNorm ->
   ReLU) -> e_i. The whole graph (all C nodes) is one batch, so BatchNorm
   always sees the same population and the embeddings read out with batch
   statistics are exactly the ones the objective was minimised for.
3. Objective (eq. 3-5): losses.asge_loss(E, A, alpha); alpha = None for
   images, 0.1 for video (large sparse graphs: weak edges only have to stay
   weak).
4. SGD with momentum 0.9, lr 0.01, a few thousand full-graph steps inside one
   jitted lax.scan; deterministic for a seed.

Nothing is registered: ASGE is a helper; CMA (`methods/cma.py`) trains on
top of its embeddings.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmlc import labelgraph, losses

DEFAULT_STEPS = 3000
LEARNING_RATE = 0.01
MOMENTUM = 0.9


class LabelEmbeddingNet(nn.Module):
  """Phi: one-hot class indices [C, C] -> embeddings [C, dim] (>= 0)."""
  dim: int = 256
  num_layers: int = 3

  @nn.compact
  def __call__(self, one_hot, train: bool = True):
    x = one_hot
    for i in range(self.num_layers):
      x = nn.Dense(self.dim, name=f"dense{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, name=f"bn{i}")(x)
      x = nn.relu(x)
    return x


def fit_graph(adjacency, dim: int = 256, alpha: float | None = None,
              steps: int = DEFAULT_STEPS, seed: int = 0,
              learning_rate: float = LEARNING_RATE):
  """Trains Phi on a given graph.

  Args:
    adjacency: [C, C] float, symmetric, entries in [0, 1].
    dim: embedding width (256 in the paper).
    alpha: relaxation threshold of eq. 4-5 (None: none).
    steps: full-graph SGD steps.
    seed: parameter initialisation seed.
  Returns:
    (embeddings np.float32 [C, dim], objective np.float32 [steps]) where
    objective[s] is asge_loss before step s.
  """
  target = jnp.asarray(adjacency, jnp.float32)
  num_classes = target.shape[0]
  if target.ndim != 2 or target.shape != (num_classes, num_classes):
    raise ValueError(f"asge.fit_graph: expected a square adjacency [C, C]; "
                     f"found shape {target.shape}.")
  one_hot = jnp.eye(num_classes, dtype=jnp.float32)
  net = LabelEmbeddingNet(dim=dim)
  variables = net.init(jax.random.PRNGKey(seed), one_hot, train=False)
  tx = optax.sgd(learning_rate, momentum=MOMENTUM)

  def objective(params, batch_stats):
    embeddings, updates = net.apply(
        {"params": params, "batch_stats": batch_stats}, one_hot, train=True,
        mutable=["batch_stats"])
    return losses.asge_loss(embeddings, target, alpha), (
        embeddings, updates["batch_stats"])

  @jax.jit
  def run(params, batch_stats):
    def step(carry, _):
      params, batch_stats, opt_state = carry
      (value, (_, batch_stats)), grads = jax.value_and_grad(
          objective, has_aux=True)(params, batch_stats)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), batch_stats,
              opt_state), value
    (params, batch_stats, _), history = jax.lax.scan(
        step, (params, batch_stats, tx.init(params)), None, length=steps)
    _, (embeddings, _) = objective(params, batch_stats)
    return embeddings, history

  embeddings, history = run(variables["params"], variables["batch_stats"])
  return (np.asarray(embeddings, np.float32),
          np.asarray(history, np.float32))


def fit_label_embeddings(labels, mask=None, dim: int = 256, alpha=None,
                         steps: int = DEFAULT_STEPS,
                         seed: int = 0) -> np.ndarray:
  """ASGE label embeddings from a label matrix (the offline word vectors).

  Args:
    labels: [N, C] in {0, 1} (training labels).
    mask: [N, C] in {0, 1}, 1 = known; None = all known. Only known
      positives build the graph.
    dim: embedding width.
    alpha: None for image datasets, 0.1 for video (eq. 4-5).
    steps: full-graph SGD steps.
    seed: initialisation seed; the result is a deterministic function of
      (labels, mask, dim, alpha, steps, seed).
  Returns:
    np.float32 [C, dim].
  """
  adjacency = labelgraph.symmetric_conditional_adjacency(
      np.asarray(labels), None if mask is None else np.asarray(mask))
  embeddings, _ = fit_graph(adjacency, dim=dim, alpha=alpha, steps=steps,
                            seed=seed)
  return embeddings
