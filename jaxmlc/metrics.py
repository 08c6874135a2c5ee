"""Multi-label evaluation metrics, numpy on the host (specs/core_math.md).

Conventions for every function:
  scores:  [N, C] probabilities in [0, 1] (or any monotone score for AP).
  targets: [N, C] in {0, 1}; entries > 0.5 count as positive.
  mask:    optional [N, C], 1 = evaluate this entry, 0 = leave it out (VOC
           "difficult", unknown labels). None = evaluate everything.
Classes with no positive among their evaluated entries get NaN per-class
values and are left out of every per-class mean.

Everything is vectorised numpy working on blocks of columns (AP: one int64
sort per block) or rows (thresholded metrics), so 100k x 1000 never
allocates full-size temporaries.
"""
from __future__ import annotations

import numpy as np

_BLOCK = 1 << 23  # entries per column block for AP: 64 MB of sort keys
_ROW_BLOCK = 1 << 18  # entries per row block for thresholded metrics
_CHUNK_ROWS = 1024  # rows per in-cache step when building sort keys


# ----------------------------------------------------------------- helpers --

def _inputs(fn, scores, targets, mask=None):
  """Validated numpy views of the arguments (no copies)."""
  scores, targets = np.asarray(scores), np.asarray(targets)
  if scores.ndim != 2:
    raise ValueError(
        f"{fn}: scores must be [N, C], got shape {scores.shape}. Fix: pass "
        "one row per sample (x[:, None] for a single class).")
  if targets.shape != scores.shape:
    raise ValueError(
        f"{fn}: targets has shape {targets.shape}, expected {scores.shape} "
        "(the shape of scores). Fix: pass multi-hot [N, C] targets.")
  if mask is not None:
    mask = np.asarray(mask)
    if mask.shape != scores.shape:
      raise ValueError(
          f"{fn}: mask has shape {mask.shape}, expected {scores.shape} (the "
          "shape of scores). Fix: pass a [N, C] 0/1 mask, or None.")
  if scores.dtype.kind == "f" and scores.size and np.isnan(np.min(scores)):
    # np.min propagates NaN without a full-size temporary.
    raise ValueError(
        f"{fn}: scores contain NaN. Fix: check the model outputs (a NaN "
        "loss upstream?) before evaluating.")
  return scores, targets, mask


def _column_blocks(num_rows, num_columns):
  width = max(1, _BLOCK // max(num_rows, 1))
  for start in range(0, num_columns, width):
    yield slice(start, min(start + width, num_columns))


def _row_blocks(num_rows, num_columns):
  height = max(1, _ROW_BLOCK // max(num_columns, 1))
  for start in range(0, num_rows, height):
    yield slice(start, min(start + height, num_rows))


def _nanmean(values) -> float:
  values = np.asarray(values, np.float64)
  if values.size == 0 or np.all(np.isnan(values)):
    return float("nan")
  return float(np.nanmean(values))


# ----------------------------------------------------- average precision ---

def _sort_keys(scores, targets, mask, out):
  """int64 sort keys [W, N] for a column block of float32-exact scores.

  High word: the score's float32 bits mapped to an int32 in the same order
  (negatives as -magnitude, so -0.0 and 0.0 tie as they do for sklearn);
  masked entries get INT32_MIN, below every real score (-inf included).
  Low word: 0 = positive, 1 = negative or masked. Sorting the keys then
  orders each class by score, and within tied scores puts positives before
  negatives.

  Args:
    scores, targets, mask: [N, W] column blocks (mask may be None).
    out: int64 buffer of at least W * N entries, reused across blocks
      (fresh 64 MB arrays cost a page fault per 4 kB).
  Returns:
    (keys [W, N] int64 view of out, low word [W, N] int32 view of keys).
  """
  num_rows, width = scores.shape
  keys = out[:width * num_rows].reshape(width, num_rows)
  halves = keys.view(np.int32).reshape(width, num_rows, 2)
  high_word = 1 if np.little_endian else 0
  high, low = halves[..., high_word], halves[..., 1 - high_word]
  bits = np.asarray(scores, np.float32).view(np.int32)
  # Row chunks small enough for every temporary to stay in cache; each is
  # transposed into the keys as it is made.
  for start in range(0, num_rows, _CHUNK_ROWS):
    rows = slice(start, start + _CHUNK_ROWS)
    chunk = bits[rows]
    sign = chunk >> 31                               # -1 or 0
    magnitude = chunk & np.int32(0x7FFFFFFF)
    magnitude ^= sign
    magnitude -= sign                                # -magnitude if sign
    negative = targets[rows] <= 0.5
    if mask is not None:
      masked = mask[rows] == 0
      magnitude[masked] = np.iinfo(np.int32).min
      negative |= masked
    high[:, rows] = magnitude.T
    low[:, rows] = negative.T
  return keys, low


def _sorted_positives(scores, targets, mask, buffer):
  """Positives of each class in ascending score order.

  For every class (row of the transposed block) the evaluated entries are
  ordered by ascending score, masked entries are placed before all of them,
  and within tied scores positives come before negatives. Read from the top
  (descending), the last positive of a tie group then sits after all of the
  group's negatives: its position gives the counts at the tie group's
  threshold, which is how sklearn scores ties (one threshold per value).

  Args:
    scores, targets, mask: [N, W] column blocks (mask may be None).
    buffer: int64 work buffer of at least W * N entries.
  Returns:
    (row, col, tie): for each positive, its class (0..W-1), its position in
    that class's ascending order (0..N-1), and a value equal for equal
    scores of the same class. Sorted by (row, col).
  """
  num_rows = scores.shape[0]
  if scores.dtype == np.float32 or np.array_equal(
      scores.astype(np.float32), scores):
    # Fast path: one int64 sort of (score, label) keys, no gathers.
    keys, low = _sort_keys(scores, targets, mask, buffer)
    keys.sort(axis=1)
    index = np.flatnonzero(low == 0)
    row, col = np.divmod(index, num_rows)
    return row, col, keys.ravel()[index]
  # General path (scores not exactly float32, e.g. float64 probabilities).
  values = np.add(scores.T, 0.0, dtype=np.float64)  # -0.0 -> 0.0
  code = np.where(targets.T > 0.5, np.int8(1), np.int8(2))
  if mask is not None:
    code[mask.T == 0] = 0
  order = np.lexsort((code, values, code != 0), axis=-1)
  code = np.take_along_axis(code, order, axis=1)
  row, col = np.nonzero(code == 1)
  return row, col, values[row, order[row, col]]


def _precision_sums(scores, targets, mask):
  """Per class: sum over positives of precision at their threshold, the same
  with the VOC precision envelope, and the number of positives.

  Returns (ap_sum [C] float64, voc_sum [C] float64, positives [C] int64).
  """
  num_rows, num_classes = scores.shape
  ap_sum = np.zeros(num_classes)
  voc_sum = np.zeros(num_classes)
  positives = np.zeros(num_classes, np.int64)
  blocks = list(_column_blocks(num_rows, num_classes))
  buffer = np.empty(num_rows * (blocks[0].stop - blocks[0].start) if blocks
                    else 0, np.int64)
  for block in blocks:
    row, col, tie = _sorted_positives(
        scores[:, block], targets[:, block],
        None if mask is None else mask[:, block], buffer)
    width = block.stop - block.start
    count = np.bincount(row, minlength=width)
    positives[block] = count
    if row.size == 0:
      continue
    first = np.cumsum(count) - count               # first positive per class
    index = np.arange(row.size)
    # Counts from the top down to this position: positives, and evaluated
    # entries (masked ones sort below everything).
    true_positives = count[row] - (index - first[row])
    at_or_above = num_rows - col
    # A tie group's threshold is read at its first positive (ascending).
    leader = np.ones(row.size, bool)
    leader[1:] = (tie[1:] != tie[:-1]) | (row[1:] != row[:-1])
    leader_index = np.maximum.accumulate(np.where(leader, index, 0))
    precision = (true_positives / at_or_above)[leader_index]
    # VOC envelope: max precision at any lower threshold = running max in
    # ascending order. Adding 2 * row makes np.maximum.accumulate restart
    # at each class, since precision lies in (0, 1].
    offset = 2.0 * row
    envelope = np.maximum.accumulate(precision + offset) - offset
    ap_sum[block] = np.bincount(row, weights=precision, minlength=width)
    voc_sum[block] = np.bincount(row, weights=envelope, minlength=width)
  return ap_sum, voc_sum, positives


def _per_class(sums, positives):
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(positives > 0, sums / np.maximum(positives, 1), np.nan)


def average_precision(scores, targets, mask=None) -> np.ndarray:
  """Per-class non-interpolated AP, as sklearn's average_precision_score.

  AP = sum over thresholds of (R_n - R_{n-1}) P_n, one threshold per distinct
  score (tied scores form one threshold), over the evaluated entries.

  Args:
    scores: [N, C]; targets: [N, C] in {0, 1}; mask: optional [N, C].
  Returns:
    [C] float64; NaN for classes without an evaluated positive.
  """
  scores, targets, mask = _inputs("average_precision", scores, targets, mask)
  ap_sum, _, positives = _precision_sums(scores, targets, mask)
  return _per_class(ap_sum, positives)


def voc_average_precision(scores, targets, mask=None) -> np.ndarray:
  """Per-class VOC 2010+ AP: area under the interpolated precision envelope.

  Each recall step 1/P is weighted by the highest precision at any recall
  >= it (the devkit's `mpre` envelope). Tied scores form one threshold, as
  in `average_precision` (the devkit breaks ties by sort order; without
  ties the two agree).

  Args:
    scores: [N, C]; targets: [N, C] in {0, 1}; mask: optional [N, C].
  Returns:
    [C] float64; NaN for classes without an evaluated positive.
  """
  scores, targets, mask = _inputs("voc_average_precision", scores, targets,
                                  mask)
  _, voc_sum, positives = _precision_sums(scores, targets, mask)
  return _per_class(voc_sum, positives)


def mean_average_precision(scores, targets, mask=None,
                           kind="standard") -> float:
  """Mean over classes with positives of AP (kind="standard" | "voc")."""
  functions = {"standard": average_precision, "voc": voc_average_precision}
  if kind not in functions:
    raise ValueError(
        f"mean_average_precision: kind={kind!r}, expected one of "
        f"{sorted(functions)}. Fix: kind='voc' for the interpolated AP that "
        "HST/HCP report, 'standard' for sklearn's.")
  return _nanmean(functions[kind](scores, targets, mask))


# ------------------------------------------------ thresholded predictions ---

def _kth_largest(scores, k):
  """[R] the k-th largest score of each row, repeats counted (k: [R])."""
  return np.take_along_axis(np.sort(scores, axis=1),
                            (scores.shape[1] - k)[:, None], axis=1)[:, 0]


def _top_k(scores, k):
  """[R, C] bool: each row's k highest scores, exactly k per row.

  k: int, or [R] ints in [1, C]. Ties at the k-th score go to the lowest
  class indices, so the result does not depend on sort internals.
  """
  num_rows, num_classes = scores.shape
  per_row = np.ndim(k) > 0
  k_rows = np.broadcast_to(np.minimum(k, num_classes), (num_rows,))
  if per_row:
    threshold = _kth_largest(scores, k_rows)
  elif k >= num_classes:
    return np.ones(scores.shape, bool)
  elif k <= 4:
    # k - 1 masked row maxima cost a few streaming passes, far less than a
    # partition. This is the k-th largest *distinct* score; rows where it
    # selects more than k (ties) are redone below.
    threshold, rest = scores.max(axis=1), scores
    for _ in range(k - 1):
      rest = np.where(rest < threshold[:, None], rest, -np.inf)
      threshold = rest.max(axis=1)
  else:
    threshold = np.partition(scores, num_classes - k, axis=1)[
        :, num_classes - k]
  selected = scores >= threshold[:, None]
  tied_rows = np.flatnonzero(np.count_nonzero(selected, axis=1) != k_rows)
  if tied_rows.size:
    tied_scores, tied_k = scores[tied_rows], k_rows[tied_rows]
    kth = _kth_largest(tied_scores, tied_k)[:, None]
    above = tied_scores > kth
    at_kth = tied_scores == kth
    free = tied_k[:, None] - np.count_nonzero(above, axis=1, keepdims=True)
    selected[tied_rows] = above | (at_kth
                                   & (np.cumsum(at_kth, axis=1) <= free))
  return selected


def _selection_counts(scores, targets, mask, *selects):
  """Per selector and class: (true positives, predicted, positives) over the
  evaluated entries; select(score_rows) -> bool predictions.

  Returns [len(selects), 3, C] int64 (one pass over the rows for all).
  """
  num_rows, num_classes = scores.shape
  counts = np.zeros((len(selects), 3, num_classes), np.int64)
  for rows in _row_blocks(num_rows, num_classes):
    positive = targets[rows] > 0.5
    evaluated = None if mask is None else mask[rows] != 0
    if evaluated is not None:
      positive &= evaluated
    num_positive = positive.sum(axis=0, dtype=np.int32)
    for count, select in zip(counts, selects):
      predicted = select(scores[rows])
      if evaluated is not None:
        predicted &= evaluated
      predicted_positive = predicted & positive
      # bool sums over rows in int32: several times faster than int64.
      count[0] += predicted_positive.sum(axis=0, dtype=np.int32)
      count[1] += predicted.sum(axis=0, dtype=np.int32)
      count[2] += num_positive
  return counts


def _f1(precision, recall) -> float:
  if precision + recall > 0:
    return float(2 * precision * recall / (precision + recall))
  return float("nan") if np.isnan(precision + recall) else 0.0


def _precision_recall(counts) -> dict:
  true_positives, predicted, positives = counts
  has_positive = positives > 0
  class_precision = true_positives / np.maximum(predicted, 1)
  class_recall = true_positives / np.maximum(positives, 1)
  cp = _nanmean(class_precision[has_positive])
  cr = _nanmean(class_recall[has_positive])
  op = float(true_positives.sum() / max(predicted.sum(), 1))
  total = positives.sum()
  overall_recall = (float(true_positives.sum() / total) if total
                    else float("nan"))
  return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr),
          "OP": op, "OR": overall_recall, "OF1": _f1(op, overall_recall)}


def threshold_metrics(scores, targets, threshold=0.5, mask=None) -> dict:
  """Per-class (C*) and overall (O*) precision, recall and F1.

  Predicted positive iff score >= threshold. Per class precision =
  TP / max(predicted, 1), recall = TP / positives; CP and CR average over
  classes with positives, CF1 = 2 CP CR / (CP + CR); OP, OR, OF1 pool every
  evaluated entry. F1 is 0 when precision and recall are both 0; CR/OR are
  NaN when nothing is positive.

  Returns:
    {"CP", "CR", "CF1", "OP", "OR", "OF1"}: Python floats in [0, 1].
  """
  scores, targets, mask = _inputs("threshold_metrics", scores, targets, mask)
  counts, = _selection_counts(scores, targets, mask,
                              lambda rows: rows >= threshold)
  return _precision_recall(counts)


def topk_metrics(scores, targets, k=3, threshold=0.5, mask=None) -> dict:
  """threshold_metrics where a prediction must also be in its sample's top k.

  Predicted positive iff the entry is among its row's k highest scores (over
  all classes, masked or not: the model's prediction does not depend on
  which labels are known) and score >= threshold, as the ML-GCN/HCP
  evaluation code does. Ties at the k-th score go to lower class indices.
  """
  scores, targets, mask = _inputs("topk_metrics", scores, targets, mask)
  if int(k) < 1:
    raise ValueError(f"topk_metrics: k={k}, expected k >= 1.")
  counts, = _selection_counts(
      scores, targets, mask,
      lambda rows: _top_k(rows, int(k)) & (rows >= threshold))
  return _precision_recall(counts)


def _hamming(counts, evaluated) -> float:
  true_positives, predicted, positives = counts.sum(axis=1)
  # |pred xor target| = predicted + positives - 2 TP.
  mismatches = predicted + positives - 2 * true_positives
  return float(mismatches / evaluated) if evaluated else float("nan")


def hamming_loss(predictions, targets, mask=None) -> float:
  """Fraction of evaluated (sample, class) entries where the 0/1 prediction
  (> 0.5 counts as 1) differs from the target; NaN if nothing is evaluated."""
  predictions, targets, mask = _inputs("hamming_loss", predictions, targets,
                                       mask)
  counts, = _selection_counts(predictions, targets, mask,
                              lambda rows: rows > 0.5)
  evaluated = predictions.size if mask is None else np.count_nonzero(mask)
  return _hamming(counts, evaluated)


# ------------------------------------------------------ ranking per sample --

def hit_at_one(scores, targets) -> float:
  """Fraction of samples whose top-scored class is positive (YouTube-8M);
  ties go to the lowest class index."""
  scores, targets, _ = _inputs("hit_at_one", scores, targets)
  if scores.shape[0] == 0:
    return float("nan")
  top = np.argmax(scores, axis=1)
  return float(np.mean(targets[np.arange(scores.shape[0]), top] > 0.5))


def precision_at_equal_recall(scores, targets) -> float:
  """PERR (YouTube-8M): for each sample with n > 0 positives, the precision
  of its n top-scored classes; mean over those samples (NaN if none). Ties
  at the n-th score go to lower class indices."""
  scores, targets, _ = _inputs("precision_at_equal_recall", scores, targets)
  total, samples = 0.0, 0
  for rows in _row_blocks(*scores.shape):
    positive = targets[rows] > 0.5
    num_positive = np.count_nonzero(positive, axis=1)
    keep = num_positive > 0
    if not keep.any():
      continue
    top = _top_k(scores[rows][keep], num_positive[keep])
    hits = np.count_nonzero(top & positive[keep], axis=1)
    total += float(np.sum(hits / num_positive[keep]))
    samples += int(keep.sum())
  return total / samples if samples else float("nan")


def global_average_precision(scores, targets, top_k=20) -> float:
  """YouTube-8M GAP: AP of every sample's top_k predictions pooled together.

  sum_i precision(i) rel(i) / total_positives over the pooled list sorted by
  score, where total_positives counts all positives of `targets` (so
  positives outside a sample's top_k cost recall). Tied pooled scores form
  one threshold, as in `average_precision` (YouTube-8M's code breaks them by
  order); ties at a sample's top_k boundary go to lower class indices.
  """
  scores, targets, _ = _inputs("global_average_precision", scores, targets)
  k = min(int(top_k), scores.shape[1])
  pooled_scores, pooled_targets = [], []
  for rows in _row_blocks(*scores.shape):
    top = _top_k(scores[rows], k)
    pooled_scores.append(scores[rows][top])
    pooled_targets.append(targets[rows][top] > 0.5)
  total_positives = np.count_nonzero(targets > 0.5)
  if total_positives == 0:
    return float("nan")
  ap_sum, _, _ = _precision_sums(np.concatenate(pooled_scores)[:, None],
                                 np.concatenate(pooled_targets)[:, None], None)
  return float(ap_sum[0] / total_positives)


# ----------------------------------------------------------------- summary --

def summarize(scores, targets, mask=None) -> dict:
  """Everything the trainer logs and writes to results.json.

  Returns:
    {"mAP": standard mAP, "mAP_voc": VOC mAP, "CP", "CR", "CF1", "OP", "OR",
     "OF1" (threshold 0.5), "top3": the same six for top-3 predictions,
     "hamming_loss": with predictions = scores >= 0.5}; Python floats.
  """
  scores, targets, mask = _inputs("summarize", scores, targets, mask)
  ap_sum, voc_sum, positives = _precision_sums(scores, targets, mask)
  counts, top3 = _selection_counts(
      scores, targets, mask, lambda rows: rows >= 0.5,
      lambda rows: _top_k(rows, 3) & (rows >= 0.5))
  evaluated = scores.size if mask is None else np.count_nonzero(mask)
  return {"mAP": _nanmean(_per_class(ap_sum, positives)),
          "mAP_voc": _nanmean(_per_class(voc_sum, positives)),
          **_precision_recall(counts),
          "top3": _precision_recall(top3),
          "hamming_loss": _hamming(counts, evaluated)}
