"""Datasets and the input pipeline.

One example schema for every dataset (`../shared/specs/data.md`):
  "image": uint8 [H, W, 3]  (or "features": f32 [D] / "frames": f32 [T, D])
  "modality2": f32 [D2]     optional paired non-image modality (tags BOW)
  "feat_<name>": f32 [D]    optional extra feature vectors
  "labels": uint8 [C]       multi-hot
  "label_mask": uint8 [C]   1 = evaluate / known (VOC difficult = 0)
  "id": string
Splits: "train", "test", and where a method uses one, "unlabeled".
"""
