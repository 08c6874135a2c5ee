"""The keys every run has; `configs/*.py` start from `base_config()`.

Names here are public (architecture.md, "Run artifacts and config keys").
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "baseline"
  c.seed = 0
  c.multihost = False            # call jax.distributed.initialize()
  # Explicit topology for jax.distributed; empty = detect (TPU pods, SLURM...).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 1
  c.distributed.process_id = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic_scenes"
  c.data.variant = "default"     # builder config (synthetic_scenes: image size, split sizes)
  c.data.dir = "data"            # TFDS data_dir / local dataset root
  c.data.train_split = "train"
  c.data.train_examples = 0      # > 0: only the first N of train_split (scarce labels)
  c.data.test_split = "test"
  c.data.known_label_proportion = 1.0
  c.data.mask_seed = 0
  c.data.image_size = 64         # model input size
  c.data.resize_size = 0         # train resize before the crop (0: image_size)
  c.data.crop_scales = ()        # random crop side from this set, then resize; () = none
  c.data.flip = True
  c.data.normalize = "imagenet"  # "imagenet" | "none"
  c.data.unlabeled_batch_size = 0  # global; 0 = no unlabeled stream
  c.data.shuffle_buffer = 0      # 0: a full-split permutation per epoch
  c.data.on_bad_example = "fail"  # "fail" | "skip"
  c.data.parallel_calls = -1     # -1: tf.data.AUTOTUNE
  c.data.prefetch = 2

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "resnet18"
  c.model.width = 64             # ResNet base width (64 = torchvision)
  c.model.pretrained = ""        # local .safetensors/.npz/.pth/converted file
  c.model.frozen_stages = ()     # e.g. ("stem", "layer1", "layer2", "layer3")

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"          # "adam" | "adamw" | "sgd"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.0     # coupled (torch Adam style) for adam/sgd
  c.optim.momentum = 0.9
  c.optim.schedule = "constant"  # "constant" | "step" | "cosine"
  c.optim.decay_every_epochs = 10
  c.optim.decay_factor = 0.1
  c.optim.warmup_steps = 0
  c.optim.grad_clip = 0.0        # global-norm clip; 0 = off

  c.train = ml_collections.ConfigDict()
  c.train.global_batch_size = 32
  c.train.epochs = 10
  c.train.steps = 0              # > 0 overrides epochs
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.eval_every = 0         # steps; 0 = at the end only
  c.train.log_every = 10
  c.train.precision = "float32"  # "float32" | "bfloat16"
  c.train.nan_policy = "stop"    # "stop" | "skip"
  c.train.eval_batch_size = 0    # 0: global_batch_size
  c.train.progress = True
  c.train.async_checkpoint = False  # orbax async saves (commit is still atomic)
  return c
