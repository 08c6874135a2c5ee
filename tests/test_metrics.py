"""jaxmlc.metrics against scikit-learn, hand-computed cases and direct
(quadratic, loop-based) re-derivations of each definition."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from jaxmlc import metrics

SIX = ("CP", "CR", "CF1", "OP", "OR", "OF1")


@pytest.fixture
def small_blocks(monkeypatch):
  """Tiny work blocks, so small inputs cross block and chunk boundaries."""
  monkeypatch.setattr(metrics, "_BLOCK", 64)
  monkeypatch.setattr(metrics, "_ROW_BLOCK", 16)
  monkeypatch.setattr(metrics, "_CHUNK_ROWS", 7)


def _data(seed, shape=(60, 7), ties=True, dtype=np.float32):
  rng = np.random.default_rng(seed)
  targets = (rng.random(shape) < 0.3).astype(np.float32)
  scores = rng.random(shape) * 0.6 + 0.4 * targets   # informative
  if ties:
    scores = np.round(scores, 1)                      # many tied scores
  mask = (rng.random(shape) < 0.8).astype(np.float32)
  return scores.astype(dtype), targets, mask


def _sklearn_ap(scores, targets, mask=None):
  out = []
  for k in range(scores.shape[1]):
    keep = slice(None) if mask is None else mask[:, k] > 0
    y = targets[keep, k]
    out.append(average_precision_score(y, scores[keep, k]) if y.sum() > 0
               else np.nan)
  return np.array(out)


def _direct_ap(scores, targets, mask=None, voc=False):
  """Quadratic form of both APs: each positive i weighs 1/P; its precision
  is #pos(s >= s_i) / #(s >= s_i) (one threshold per tied value); VOC takes
  the best precision at any threshold <= s_i instead."""
  mask = np.ones_like(scores) if mask is None else mask
  out = []
  for k in range(scores.shape[1]):
    s, y = scores[mask[:, k] > 0, k], targets[mask[:, k] > 0, k] > 0.5
    if not y.any():
      out.append(np.nan)
      continue
    precision = {v: np.sum(y & (s >= v)) / np.sum(s >= v) for v in s[y]}
    if voc:
      precision = {v: max(p for u, p in precision.items() if u <= v)
                   for v in precision}
    out.append(np.mean([precision[v] for v in s[y]]))
  return np.array(out)


def _devkit_voc_ap(scores, labels):
  """VOC 2010+ devkit / HCP `voc_ap` for one class, ties broken by order."""
  order = np.argsort(-scores, kind="stable")
  tp = np.cumsum(labels[order] > 0)
  fp = np.cumsum(labels[order] <= 0)
  recall = tp / tp[-1]
  precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  mrec = np.concatenate(([0.0], recall, [1.0]))
  mpre = np.concatenate(([0.0], precision, [0.0]))
  for i in range(mpre.size - 1, 0, -1):
    mpre[i - 1] = max(mpre[i - 1], mpre[i])
  i = np.where(mrec[1:] != mrec[:-1])[0]
  return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


# ------------------------------------------------------------------ AP -----

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("use_mask", [False, True])
def test_ap_matches_sklearn_with_ties(dtype, use_mask, small_blocks):
  scores, targets, mask = _data(0, ties=True)
  if dtype == np.int64:
    scores = np.round(scores * 10)
  scores = scores.astype(dtype)
  mask = mask if use_mask else None
  np.testing.assert_allclose(metrics.average_precision(scores, targets, mask),
                             _sklearn_ap(scores, targets, mask), atol=1e-12)


def test_ap_float64_not_float32_exact():
  # 0.1 + 1e-12 and 0.1 are equal in float32 but not for sklearn.
  scores = np.array([[0.1 + 1e-12], [0.1], [0.05], [0.1]])
  targets = np.array([[0.0], [1.0], [1.0], [0.0]])
  np.testing.assert_allclose(metrics.average_precision(scores, targets),
                             _sklearn_ap(scores, targets), atol=1e-12)


def test_ap_signed_zero_and_infinities_tie_like_floats():
  # sklearn rejects inf, so the direct formula is the reference here.
  scores = np.array([[-0.0], [0.0], [np.inf], [-np.inf], [0.0], [-1.0]],
                    np.float32)
  targets = np.array([[1.0], [0.0], [0.0], [1.0], [1.0], [0.0]])
  np.testing.assert_allclose(metrics.average_precision(scores, targets),
                             _direct_ap(scores, targets), atol=1e-12)
  np.testing.assert_allclose(metrics.voc_average_precision(scores, targets),
                             _direct_ap(scores, targets, voc=True),
                             atol=1e-12)


def test_ap_hand_cases():
  # Positives at ranks 2 and 3: precisions 1/2 and 2/3.
  scores = np.array([[0.9], [0.8], [0.7]])
  targets = np.array([[0.0], [1.0], [1.0]])
  assert metrics.average_precision(scores, targets)[0] == pytest.approx(7 / 12)
  # VOC envelope: the first positive takes the later, higher 2/3.
  assert metrics.voc_average_precision(scores, targets)[0] == pytest.approx(
      2 / 3)
  # A tie {0.9: one positive, one negative} is one threshold: precision 1/2
  # for its positive, then 2/3 at 0.5; the envelope lifts 1/2 to 2/3.
  scores = np.array([[0.9], [0.9], [0.5]])
  targets = np.array([[1.0], [0.0], [1.0]])
  assert metrics.average_precision(scores, targets)[0] == pytest.approx(7 / 12)
  assert metrics.voc_average_precision(scores, targets)[0] == pytest.approx(
      2 / 3)
  # Already monotone precision: both APs agree, (1 + 2/3) / 2.
  scores = np.array([[0.9], [0.8], [0.7], [0.6]])
  targets = np.array([[1.0], [0.0], [1.0], [0.0]])
  assert metrics.voc_average_precision(scores, targets)[0] == pytest.approx(
      5 / 6)


def test_voc_ap_matches_devkit_without_ties(small_blocks):
  scores, targets, _ = _data(1, ties=False, dtype=np.float64)
  expected = [_devkit_voc_ap(scores[:, k], targets[:, k])
              for k in range(scores.shape[1])]
  np.testing.assert_allclose(metrics.voc_average_precision(scores, targets),
                             expected, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_aps_match_direct_formula_with_ties_and_mask(dtype,
                                                          small_blocks):
  scores, targets, mask = _data(2, ties=True, dtype=dtype)
  for voc, fn in ((False, metrics.average_precision),
                  (True, metrics.voc_average_precision)):
    np.testing.assert_allclose(fn(scores, targets, mask),
                               _direct_ap(scores, targets, mask, voc=voc),
                               atol=1e-12)


def test_classes_without_positives_are_nan_and_skipped():
  scores, targets, mask = _data(3)
  targets[:, 1] = 0                         # never positive
  mask[targets[:, 2] > 0, 2] = 0            # positives all masked out
  ap = metrics.average_precision(scores, targets, mask)
  assert np.isnan(ap[1]) and np.isnan(ap[2])
  assert np.all(np.isfinite(np.delete(ap, [1, 2])))
  assert metrics.mean_average_precision(scores, targets, mask) == (
      pytest.approx(np.nanmean(ap)))
  voc = metrics.voc_average_precision(scores, targets, mask)
  assert metrics.mean_average_precision(scores, targets, mask, kind="voc") == (
      pytest.approx(np.nanmean(voc)))
  assert np.isnan(metrics.mean_average_precision(scores, np.zeros_like(
      targets)))


def test_masked_entries_do_not_count():
  # The masked negative scores highest; without it the positive ranks first.
  scores = np.array([[0.9], [0.8], [0.1]])
  targets = np.array([[0.0], [1.0], [0.0]])
  mask = np.array([[0.0], [1.0], [1.0]])
  assert metrics.average_precision(scores, targets, mask)[0] == 1.0
  assert metrics.average_precision(scores, targets)[0] == 0.5


# ------------------------------------------------ thresholded metrics ------

def _direct_counts(predicted, targets, mask=None):
  evaluated = np.ones(targets.shape, bool) if mask is None else mask > 0
  positive = (targets > 0.5) & evaluated
  predicted = predicted & evaluated
  return ((predicted & positive).sum(0), predicted.sum(0), positive.sum(0))


def _direct_six(true_positive, predicted, positive):
  has = positive > 0
  cp = np.mean(true_positive[has] / np.maximum(predicted[has], 1))
  cr = np.mean(true_positive[has] / positive[has])
  op = true_positive.sum() / max(predicted.sum(), 1)
  o_r = true_positive.sum() / positive.sum()
  f1 = lambda p, r: 2 * p * r / (p + r) if p + r > 0 else 0.0
  return dict(CP=cp, CR=cr, CF1=f1(cp, cr), OP=op, OR=o_r, OF1=f1(op, o_r))


def _direct_top_k(scores, k):
  """Each row's k best classes, ties to the lower class index."""
  chosen = np.zeros(scores.shape, bool)
  for i, row in enumerate(scores):
    chosen[i, np.argsort(-row, kind="stable")[:k]] = True
  return chosen


def test_threshold_metrics_hand():
  scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.5]])
  targets = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  # Predicted (>= 0.5, boundary included): (0,0) (1,0) (1,1) (2,1).
  # Class 0: TP 1 of 2 predicted, 2 positives; class 1: TP 2 of 2, 2.
  result = metrics.threshold_metrics(scores, targets)
  expected = dict(CP=0.75, CR=0.75, CF1=0.75, OP=0.75, OR=0.75, OF1=0.75)
  assert result == pytest.approx(expected)
  result = metrics.threshold_metrics(scores, targets, threshold=0.65)
  # Class 0: TP 1/1, recall 1/2; class 1: TP 1/1, recall 1/2.
  expected = dict(CP=1.0, CR=0.5, CF1=2 / 3, OP=1.0, OR=0.5, OF1=2 / 3)
  assert result == pytest.approx(expected)


@pytest.mark.parametrize("use_mask", [False, True])
def test_threshold_metrics_match_direct(use_mask, small_blocks):
  scores, targets, mask = _data(4, ties=False)
  targets[:, 3] = 0                                   # no positives: skipped
  mask = mask if use_mask else None
  expected = _direct_six(*_direct_counts(scores >= 0.5, targets, mask))
  assert metrics.threshold_metrics(scores, targets, mask=mask) == (
      pytest.approx(expected))


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("use_mask", [False, True])
def test_topk_metrics_match_direct_with_ties(k, use_mask, small_blocks):
  scores, targets, mask = _data(5, ties=True)          # ties at the k-th
  mask = mask if use_mask else None
  predicted = _direct_top_k(scores, k) & (scores >= 0.5)
  expected = _direct_six(*_direct_counts(predicted, targets, mask))
  assert metrics.topk_metrics(scores, targets, k=k, mask=mask) == (
      pytest.approx(expected))


def test_topk_hand():
  # Top 2 of row 0: 0.9 and the first of the tied 0.6s (class 1).
  scores = np.array([[0.9, 0.6, 0.6, 0.1], [0.4, 0.3, 0.2, 0.1]])
  targets = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
  result = metrics.topk_metrics(scores, targets, k=2)
  # Predicted: (0,0) TP, (0,1) FP; row 1 is below the threshold.
  # Per class with positives: class 0 P=1 R=1/2; class 2 P=0 R=0.
  expected = dict(CP=0.5, CR=0.25, CF1=1 / 3, OP=0.5, OR=1 / 3, OF1=0.4)
  assert result == pytest.approx(expected)


def test_hamming_loss_hand():
  predictions = np.array([[1, 0], [1, 1]])
  targets = np.array([[1.0, 1.0], [0.0, 1.0]])
  assert metrics.hamming_loss(predictions, targets) == 0.5
  mask = np.array([[1.0, 0.0], [1.0, 1.0]])
  assert metrics.hamming_loss(predictions, targets, mask) == pytest.approx(
      1 / 3)
  assert metrics.hamming_loss(predictions.astype(bool), targets) == 0.5


# ------------------------------------------------ per-sample rankings ------

def test_hit_at_one_hand():
  scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
  targets = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
  # Row 2 ties: the lower class index (0) is the top one.
  assert metrics.hit_at_one(scores, targets) == pytest.approx(2 / 3)


def test_precision_at_equal_recall_hand():
  scores = np.array([[0.9, 0.8, 0.1], [0.5, 0.5, 0.5], [0.2, 0.3, 0.4]])
  targets = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
  # Row 0: top 2 = {0, 1}, precision 1/2; row 1 has no positive; row 2: 1.
  assert metrics.precision_at_equal_recall(scores, targets) == 0.75


def test_precision_at_equal_recall_matches_direct(small_blocks):
  scores, targets, _ = _data(6, ties=True)
  values = []
  for row, target in zip(scores, targets):
    n = int(target.sum())
    if n:
      values.append(target[np.argsort(-row, kind="stable")[:n]].sum() / n)
  assert metrics.precision_at_equal_recall(scores, targets) == (
      pytest.approx(np.mean(values)))


def test_global_average_precision_hand():
  scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])
  targets = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
  # Pooled top 2: .9(+) .8(+) .7(-) .5(-); 3 positives in all.
  assert metrics.global_average_precision(scores, targets, top_k=2) == (
      pytest.approx(2 / 3))


def test_global_average_precision_matches_youtube8m_loop(small_blocks):
  scores, targets, _ = _data(7, ties=False, dtype=np.float64)
  pooled = [(s, t) for row, target in zip(scores, targets)
            for s, t in zip(np.sort(row)[::-1][:4],
                            target[np.argsort(-row)][:4])]
  pooled.sort(key=lambda pair: -pair[0])
  hits, expected = 0, 0.0
  for i, (_, label) in enumerate(pooled):
    if label > 0:
      hits += 1
      expected += hits / (i + 1)
  expected /= targets.sum()
  assert metrics.global_average_precision(scores, targets, top_k=4) == (
      pytest.approx(expected))


# -------------------------------------------------------------- summary ----

@pytest.mark.parametrize("use_mask", [False, True])
def test_summarize_keys_types_and_values(use_mask, small_blocks):
  scores, targets, mask = _data(8)
  mask = mask if use_mask else None
  summary = metrics.summarize(scores, targets, mask)
  assert list(summary) == ["mAP", "mAP_voc", *SIX, "top3", "hamming_loss"]
  assert list(summary["top3"]) == list(SIX)
  flat = [v for k, v in summary.items() if k != "top3"]
  for value in flat + list(summary["top3"].values()):
    assert type(value) is float and 0.0 <= value <= 1.0
  assert summary["mAP"] == pytest.approx(
      np.nanmean(_sklearn_ap(scores, targets, mask)))
  assert summary["mAP_voc"] == pytest.approx(
      metrics.mean_average_precision(scores, targets, mask, kind="voc"))
  assert {k: summary[k] for k in SIX} == pytest.approx(
      metrics.threshold_metrics(scores, targets, mask=mask))
  assert summary["top3"] == pytest.approx(
      metrics.topk_metrics(scores, targets, k=3, mask=mask))
  assert summary["hamming_loss"] == pytest.approx(
      metrics.hamming_loss(scores >= 0.5, targets, mask))


def test_errors_are_helpful():
  scores, targets, _ = _data(9)
  with pytest.raises(ValueError, match="targets has shape"):
    metrics.average_precision(scores, targets[:, :3])
  with pytest.raises(ValueError, match=r"\[N, C\]"):
    metrics.summarize(scores[:, 0], targets[:, 0])
  bad = scores.copy()
  bad[3, 2] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    metrics.summarize(bad, targets)
  with pytest.raises(ValueError, match="kind"):
    metrics.mean_average_precision(scores, targets, kind="interpolated")
