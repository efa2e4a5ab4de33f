"""GPT pretraining on patient timelines (next-token prediction).

Launch (PRESET in tiny, demo, small, base, large):

  python -m experiments.pretrain --config=experiments/configs/pretrain.py:demo \
      --workdir=/tmp/lmm/pretrain --config.data_dir=/tmp/lmm/records \
      --config.num_train_steps=200 --config.seed=0

Presets (parameter counts for a vocabulary of 4,096 tokens; the exact count is printed at start):
  tiny   2 layers, d 64      0.7M    unit tests, seconds
  demo   4 layers, d 128     1.9M    ~0.6 s/step on a 2-core CPU: 250 steps in about 3 minutes
                                     (the README main job)
  small  8 layers, d 384     17M     one GPU
  base   12 layers, d 768    91M     a GPU node; bf16, cuDNN attention, fsdp mesh
  large  24 layers, d 2048   1.15B   several GPU nodes or a TPU slice; bf16, remat, fsdp

The config is locked: a misspelled override (`--config.modle.d_model=1`) is an error.

Sweep (learning rate x time embedding, ranked by the tuning loss):

  python -m experiments.sweep --config=experiments/configs/pretrain.py:demo --workdir=DIR \
      -- --config.data_dir=/tmp/lmm/records
"""

from __future__ import annotations

import ml_collections

from lmm_jax import sharding

PRESETS = ("tiny", "demo", "small", "base", "large")
BINARY = "experiments.pretrain"
SWEEP_METRIC = ("eval_loss", "min")


def base_config() -> ml_collections.ConfigDict:
  """Fields shared by pretraining and fine-tuning configs (fine-tuning configs start from this)."""
  c = ml_collections.ConfigDict()
  c.preset = ""
  c.data_dir = ""                   # the dataset builder's output (vocab.json, timeline/, task/)
  c.seed = 0
  c.num_train_steps = 1000
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 3
  c.log_every_steps = 10
  c.eval_every_steps = 500          # and always at the end; 0 disables periodic eval
  c.eval_batches = 50               # tuning-split batches per eval; -1 means the whole split
  c.eval_split = "tuning"
  c.batch_size = 32                 # global batch (sequences per optimizer step, all processes)
  c.eval_batch_size = 32
  c.seq_len = 512
  c.pack = True                     # first-fit packing of timelines into rows
  c.truncation = "random_window"    # long timelines: a random window (train); eval uses 'recent'
  c.worker_count = 0                # grain worker processes (0: a prefetch thread)
  c.vocab_multiple = 128            # vocabulary padding multiple (lcm'd with the vocab shards)
  c.progress = True

  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 2
  c.model.d_model = 64
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.head_dim = 16
  c.model.mlp_dim = 256
  c.model.time_embedding = "age"            # 'none' | 'age' | 'age_and_days' (docs/training.md)
  c.model.num_time_features = 32
  c.model.rope_theta = 10_000.0
  c.model.dropout_rate = 0.0
  c.model.tie_embeddings = False
  c.model.dtype = "float32"                 # compute dtype; bfloat16 on GPU/TPU
  c.model.param_dtype = "float32"
  c.model.remat = False
  c.model.attention_impl = "xla"            # 'cudnn' on NVIDIA GPUs

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.min_lr_ratio = 0.1            # cosine decays to learning_rate * min_lr_ratio
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip = 1.0               # global-norm clipping; 0 disables
  c.optimizer.grad_accum_steps = 1          # microbatches per step (batch split, grads summed)
  c.optimizer.no_decay_patterns = ("embedding", "scale", "bias")  # regexes on 'a/b/c' paths
  c.optimizer.backbone_lr_multiplier = 1.0  # fine-tuning: backbone LR = LR * multiplier
  c.optimizer.freeze_backbone = False       # fine-tuning: train the heads only

  c.mesh_shape = (-1, 1, 1)                 # ('data', 'fsdp', 'tensor'); one axis may be -1
  c.mesh_axes = sharding.MESH_AXES
  c.logical_rules = sharding.DEFAULT_RULES
  c.distributed = False                     # call jax.distributed.initialize() (multi-host)
  c.resume_from = ""                        # a workdir or checkpoint dir to continue from
  c.init_from = ""                          # a pretrain workdir: backbone parameters only
  c.peak_flops_per_device = 0.0             # for MFU; 0: looked up from the device kind
  return c


def apply_preset(c: ml_collections.ConfigDict, preset: str) -> None:
  """Sets the model size, batch, sequence length and schedule of a preset (fine-tuning configs
  call this on their own base so that PRESET means the same model everywhere)."""
  m, o = c.model, c.optimizer
  if preset == "tiny":
    c.num_train_steps, c.batch_size, c.eval_batch_size, c.seq_len = 20, 8, 8, 64
    c.checkpoint_every_steps, c.log_every_steps, c.eval_every_steps, c.eval_batches = 10, 5, 0, 2
    o.warmup_steps = 5
  elif preset == "demo":
    c.num_train_steps, c.batch_size, c.eval_batch_size, c.seq_len = 250, 8, 16, 256
    c.checkpoint_every_steps, c.log_every_steps = 125, 10
    c.eval_every_steps, c.eval_batches = 125, 8
    m.num_layers, m.d_model, m.mlp_dim = 4, 128, 384
    m.num_heads, m.num_kv_heads, m.head_dim = 4, 4, 32
    o.learning_rate, o.warmup_steps = 3e-3, 30
  elif preset == "small":
    c.num_train_steps, c.batch_size, c.seq_len = 20_000, 64, 512
    c.checkpoint_every_steps, c.eval_every_steps, c.eval_batches = 1000, 1000, 50
    m.num_layers, m.d_model, m.mlp_dim = 8, 384, 1024
    m.num_heads, m.num_kv_heads, m.head_dim = 6, 6, 64
    m.dropout_rate = 0.1
    o.learning_rate, o.warmup_steps = 1e-3, 1000
  elif preset == "base":
    c.num_train_steps, c.batch_size, c.seq_len = 100_000, 256, 1024
    c.checkpoint_every_steps, c.eval_every_steps, c.eval_batches = 2000, 2000, 100
    m.num_layers, m.d_model, m.mlp_dim = 12, 768, 2048
    m.num_heads, m.num_kv_heads, m.head_dim = 12, 12, 64
    m.dtype, m.attention_impl, m.dropout_rate = "bfloat16", "cudnn", 0.1
    o.learning_rate, o.warmup_steps = 6e-4, 2000
    c.mesh_shape = (1, -1, 1)
  elif preset == "large":
    c.num_train_steps, c.batch_size, c.seq_len = 200_000, 512, 2048
    c.checkpoint_every_steps, c.eval_every_steps, c.eval_batches = 1000, 5000, 100
    m.num_layers, m.d_model, m.mlp_dim = 24, 2048, 5632
    m.num_heads, m.num_kv_heads, m.head_dim = 16, 8, 128
    m.dtype, m.attention_impl, m.remat = "bfloat16", "cudnn", True
    o.learning_rate, o.warmup_steps = 3e-4, 2000
    c.mesh_shape = (1, -1, 1)
  else:
    raise ValueError(f"unknown preset {preset!r}: expected one of {PRESETS}")
  c.preset = preset


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
  c = base_config()
  apply_preset(c, arg or "demo")
  c.lock()
  return c


def sweep(arg: str | None = None):
  """Learning rate x time embedding (the age/elapsed-time choice of docs/training.md)."""
  rates = (1e-3, 3e-3) if arg == "tiny" else (3e-4, 1e-3, 3e-3)
  for lr in rates:
    for time_embedding in ("none", "age", "age_and_days"):
      yield {"optimizer.learning_rate": lr, "model.time_embedding": time_embedding}
