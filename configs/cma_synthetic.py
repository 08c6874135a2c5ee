"""(MS-)CMA with ASGE label embeddings on the embedded synthetic scenes.

A few CPU minutes per run:
  python launch/main.py --config=configs/cma_synthetic.py --workdir=runs/cma
  python launch/sweep.py --config=configs/cma_synthetic.py --sweep=ablation
Video (frame features, SNet + single-scale CMA, ASGE alpha 0.1), scored
with GAP / Hit@1 / PERR by launch/eval_video.py:
  python launch/eval_video.py --config=configs/cma_synthetic.py:video \
      --sweep=video
Attention maps of a trained run: launch/attention_maps.py.
Variants (`:arg`): default | tiny | video | video_tiny.

Departures from the paper's recipe, for a from-scratch tiny ResNet on
64 px images: Adam (lr 2e-3, cosine) instead of SGD 0.01 (as the baseline
config), reduce_channels 64, complete labels (CMA is a fully supervised
method).
"""
import ml_collections

from jaxmlc.config_base import base_config


def cma_defaults() -> ml_collections.ConfigDict:
  """Every `config.cma` key (methods/cma.py DEFAULTS), so sweeps can set them."""
  return ml_collections.ConfigDict(dict(
      attention="cma", label_embedding="asge", word_vectors="",
      embedding_dim=256, embedding_seed=0, asge_alpha=None, asge_steps=3000,
      word2vec_steps=2000, word2vec_negatives=5, word2vec_batch=512,
      multiscale=True, reduce_channels=1024, cmt_layers=2, beta=0.0,
      snet_features=(1024, 1024, 1024, 1024), snet_kernel=3, snet_pool=2))


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "tiny", "video", "video_tiny"):
    raise ValueError(f"configs/cma_synthetic.py:{variant}: expected default, "
                     "tiny, video or video_tiny.")
  video = variant.startswith("video")
  c = base_config()
  c.method = "cma"
  c.data.name = "synthetic_scenes"
  c.data.variant = variant
  c.data.image_size = 32 if variant == "tiny" else 64
  c.data.known_label_proportion = 1.0
  c.model.backbone = "resnet_tiny"
  c.model.width = 16
  c.cma = cma_defaults()
  c.cma.reduce_channels = 64
  c.cma.beta = 0.0
  if video:
    # Clips are 32 frames of 4 segments: no temporal pooling, so CMA attends
    # over all 32 steps (YouTube-8M's 300 frames use pool 2 -> 19 steps).
    c.cma.asge_alpha = 0.1
    c.cma.snet_features = (128, 128, 128, 128)
    c.cma.snet_pool = 1
    c.cma.reduce_channels = 0
  c.optim.name = "adam"
  c.optim.lr = 2e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"
  c.train.global_batch_size = 64
  c.train.epochs = 6
  c.train.checkpoint_every = 200
  c.train.eval_every = 0
  c.train.log_every = 20
  if variant in ("tiny", "video_tiny"):
    c.train.global_batch_size = 16
    c.train.epochs = 2
  return c


def get_sweeps():
  """Rows train with identical data, steps, optimizer and seed."""
  return {
      "ablation": [
          ("MS-CMA (ASGE)", {}),
          ("MS self-attention", {"cma.attention": "self"}),
          ("MS-CMA (one-hot)", {"cma.label_embedding": "onehot"}),
          ("MS-CMA (word2vec)", {"cma.label_embedding": "word2vec"}),
          ("CMA (ASGE, layer4)", {"cma.multiscale": False}),
          ("baseline (GAP)", {"method": "baseline"}),
      ],
      # Run with --config=configs/cma_synthetic.py:video via
      # launch/eval_video.py, which adds GAP / Hit@1 / PERR to results.json.
      "video": {
          "rows": [
              ("CMA-SNet (ASGE)", {}),
              ("self-attention-SNet", {"cma.attention": "self"}),
              ("CMA-SNet (one-hot)", {"cma.label_embedding": "onehot"}),
          ],
          "columns": ["GAP", "Hit@1", "PERR", "mAP"],
      },
  }
