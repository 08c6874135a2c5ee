"""make_optimizer: torch-style decay, schedules, frozen and lr groups."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmlc import optim
from jaxmlc.config_base import base_config


def _config(**optim_kw):
  c = base_config()
  c.optim.update(optim_kw)
  return c


def _params():
  return {"backbone": {"stem": {"w": jnp.array([1.0, -2.0])},
                       "layer4": {"w": jnp.array([0.5, 3.0])}},
          "head": {"w": jnp.array([[1.0, 2.0]])},
          "thresholds": {"ist": jnp.array(1.0)}}


def _grads(scale=1.0):
  return jax.tree.map(lambda p: scale * (0.1 * jnp.ones_like(p) + 0.3 * p),
                      _params())


def _run(tx, grads_seq, params=None):
  params = _params() if params is None else params
  state = tx.init(params)
  for g in grads_seq:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _leaves(tree):
  return {optim.param_path(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_adam_coupled_weight_decay_matches_torch_formula():
  lr, wd, b1, b2, eps = 1e-2, 5e-2, 0.9, 0.999, 1e-8
  tx = optim.make_optimizer(_config(name="adam", lr=lr, weight_decay=wd), 10)
  grads = [_grads(1.0), _grads(-2.0)]
  got = _leaves(_run(tx, grads))
  for path, p in _leaves(_params()).items():
    p, m, v = p.astype(np.float64), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
      g = _leaves(g)[path] + wd * p          # torch: decay enters the moments
      m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
      p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(got[path], p, rtol=1e-5, err_msg=str(path))


def test_adamw_is_decoupled_and_sgd_momentum_matches_torch():
  lr, wd = 1e-2, 0.1
  grads = [_grads(1.0), _grads(0.5)]
  got = _leaves(_run(optim.make_optimizer(
      _config(name="adamw", lr=lr, weight_decay=wd), 10), grads))
  got_sgd = _leaves(_run(optim.make_optimizer(
      _config(name="sgd", lr=lr, weight_decay=wd, momentum=0.9), 10), grads))
  for path, p0 in _leaves(_params()).items():
    p, m, v = p0.astype(np.float64), 0.0, 0.0
    q, buf = p0.astype(np.float64), 0.0
    for t, g in enumerate(grads, start=1):
      g = _leaves(g)[path]
      m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
      p = p - lr * ((m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t))
                                             + 1e-8) + wd * p)
      buf = 0.9 * buf + (g + wd * q) if t > 1 else g + wd * q
      q = q - lr * buf
    np.testing.assert_allclose(got[path], p, rtol=1e-5)
    np.testing.assert_allclose(got_sgd[path], q, rtol=1e-5)


def test_frozen_stages_and_extra_frozen_get_no_update_or_decay():
  c = _config(name="adam", lr=0.1, weight_decay=0.5)
  c.model.frozen_stages = ("stem",)
  tx = optim.make_optimizer(c, 5, extra_frozen=lambda p: p[0] == "thresholds")
  before, after = _leaves(_params()), _leaves(_run(tx, [_grads(), _grads()]))
  for path in before:
    frozen = path[:2] == ("backbone", "stem") or path[0] == "thresholds"
    assert np.array_equal(before[path], after[path]) == frozen, path


def test_step_schedule_warmup_and_cosine():
  c = _config(lr=1.0, schedule="step", decay_every_epochs=2, decay_factor=0.1)
  sched = optim.learning_rate_schedule(c, steps_per_epoch=3)
  np.testing.assert_allclose([float(sched(s)) for s in (0, 5, 6, 11, 12)],
                             [1.0, 1.0, 0.1, 0.1, 0.01], rtol=1e-6)
  c = _config(lr=2.0, schedule="cosine", warmup_steps=4)
  c.train.epochs, c.train.steps = 2, 0
  sched = optim.learning_rate_schedule(c, steps_per_epoch=7)   # 14 steps
  np.testing.assert_allclose(float(sched(0)), 2.0 * 0.25, rtol=1e-6)
  np.testing.assert_allclose(float(sched(4)), 2.0, rtol=1e-6)
  np.testing.assert_allclose(float(sched(9)), 1.0, rtol=1e-6)  # half way
  np.testing.assert_allclose(float(sched(14)), 0.0, atol=1e-7)


def test_lr_multipliers_scale_one_group():
  lr = 0.1
  tx = optim.make_optimizer(_config(name="sgd", lr=lr, momentum=0.0), 5,
                            lr_multipliers={"thresholds": 10.0, "head": 0.0})
  g = _grads()
  before, after, grads = _leaves(_params()), _leaves(_run(tx, [g])), _leaves(g)
  for path in before:
    factor = {"thresholds": 10.0, "head": 0.0}.get(path[0], 1.0)
    np.testing.assert_allclose(after[path],
                               before[path] - lr * factor * grads[path],
                               rtol=1e-6)


def test_grad_clip_ignores_frozen_gradients():
  c = _config(name="sgd", lr=1.0, momentum=0.0, grad_clip=1.0)
  c.model.frozen_stages = ("stem",)
  g = jax.tree.map(jnp.zeros_like, _params())
  g["backbone"]["stem"]["w"] = jnp.array([1e6, 1e6])    # frozen, huge
  g["head"]["w"] = jnp.array([[0.3, 0.4]])             # norm 0.5 < clip
  after = _run(optim.make_optimizer(c, 5), [g])
  np.testing.assert_allclose(after["head"]["w"], [[0.7, 1.6]], rtol=1e-6)
  g["head"]["w"] = jnp.array([[3.0, 4.0]])             # norm 5 -> 1
  after = _run(optim.make_optimizer(c, 5), [g])
  np.testing.assert_allclose(after["head"]["w"], [[0.4, 1.2]], rtol=1e-6)


def test_unknown_names_are_clear_errors():
  with pytest.raises(ValueError, match="optim.name"):
    optim.make_optimizer(_config(name="lamb"), 5)
  with pytest.raises(ValueError, match="optim.schedule"):
    optim.make_optimizer(_config(schedule="poly"), 5)
