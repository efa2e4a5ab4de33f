"""What the experiment configs share: the preset names, the model sizes, the training fields.

Every experiment config (pretrain.py, cost.py, chronic.py, generate.py, main_job.py) takes a preset
after the colon, from one vocabulary:

  tiny   unit tests, seconds on a CPU
  demo   the README main job on a 2-core laptop CPU
  small  one GPU
  base   a GPU node (bf16, cuDNN attention, fsdp mesh)
  large  several GPU nodes or a TPU slice (bf16, remat, fsdp)

A preset is declared one way everywhere: a table {preset: {dotted.key: value}} applied with
`apply(config, table, preset)`; keys absent from a preset's row keep the base config's value.
MODEL_PRESETS fixes the model shapes (and what must match them: sequence length, mesh), so a
fine-tuning or generation config of preset P loads the pretraining checkpoint of preset P.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from lmm_jax import sharding

PRESETS = ("tiny", "demo", "small", "base", "large")

# Parameter counts for a vocabulary of 4,096 tokens (the exact count is printed at start):
#   tiny 0.7M, demo 1.9M, small 17M, base 91M, large 1.15B.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"seq_len": 64},
    # demo: 512 tokens hold the whole year before the index for 99.5% of the members of the
    # 8,000-patient world (256: 95.2%; benchmarks/bench_history_coverage.py, docs/training.md).
    "demo": {"seq_len": 512, "model.num_layers": 4, "model.d_model": 128, "model.mlp_dim": 384,
             "model.num_heads": 4, "model.num_kv_heads": 4, "model.head_dim": 32},
    "small": {"seq_len": 512, "model.num_layers": 8, "model.d_model": 384, "model.mlp_dim": 1024,
              "model.num_heads": 6, "model.num_kv_heads": 6, "model.head_dim": 64,
              "model.dropout_rate": 0.1},
    "base": {"seq_len": 1024, "model.num_layers": 12, "model.d_model": 768, "model.mlp_dim": 2048,
             "model.num_heads": 12, "model.num_kv_heads": 12, "model.head_dim": 64,
             "model.dtype": "bfloat16", "model.attention_impl": "cudnn",
             "model.dropout_rate": 0.1, "mesh_shape": (1, -1, 1)},
    "large": {"seq_len": 2048, "model.num_layers": 24, "model.d_model": 2048,
              "model.mlp_dim": 5632, "model.num_heads": 16, "model.num_kv_heads": 8,
              "model.head_dim": 128, "model.dtype": "bfloat16", "model.attention_impl": "cudnn",
              "model.remat": True, "mesh_shape": (1, -1, 1)},
}


def preset_name(arg: str | None, default: str = "demo") -> str:
  preset = arg or default
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}: expected one of {PRESETS}")
  return preset


def apply(config: ml_collections.ConfigDict, table: Mapping[str, Mapping[str, Any]],
          preset: str) -> ml_collections.ConfigDict:
  """Sets a preset's row of `table` ({dotted.key: value}) on config; every key must exist."""
  row = table[preset_name(preset)]
  config.update_from_flattened_dict(dict(row))
  return config


def training_config() -> ml_collections.ConfigDict:
  """Fields shared by the pretraining and fine-tuning configs, before any preset."""
  c = ml_collections.ConfigDict()
  c.preset = ""
  c.task = ""                       # lmm_jax.tasks registry name: pretrain | cost | chronic
  c.data_dir = ""                   # the dataset builder's output (vocab.json, timeline/, task/)
  c.seed = 0
  c.num_train_steps = 1000
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 3
  c.log_every_steps = 10
  c.eval_every_steps = 500          # and always at the end; 0 disables periodic eval
  c.eval_batches = 50               # tuning-split batches per eval; -1 means the whole split
  c.eval_split = "tuning"
  c.train_examples = 0              # > 0: train on the first N train records only (scaling curves)
  c.batch_size = 32                 # global batch (sequences per optimizer step, all processes)
  c.eval_batch_size = 32
  c.seq_len = 512
  c.pack = True                     # first-fit packing of timelines into rows
  c.truncation = "random_window"    # long timelines: a random window (train); eval uses 'recent'
  c.worker_count = 0                # grain worker processes (0: a prefetch thread)
  c.vocab_multiple = 128            # vocabulary padding multiple (lcm'd with the vocab shards)
  c.progress = True

  c.model = ml_collections.ConfigDict()
  c.model.name = "transformer"              # lmm_jax.model registry name
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

  # Early stopping on the tuning split (lmm_jax.train.early_stopping): stop after `patience`
  # evaluations (every eval_every_steps) without improving `metric` by more than min_delta; the
  # best checkpoint is kept and prediction restores it. patience 0 disables.
  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.patience = 0
  c.early_stopping.min_delta = 0.0
  c.early_stopping.metric = "eval_loss"
  c.early_stopping.mode = "min"             # 'min' for losses, 'max' for e.g. eval_macro_auroc
  return c


def model_config(preset: str) -> ml_collections.ConfigDict:
  """training_config() with the model shapes of a preset (unlocked)."""
  c = apply(training_config(), MODEL_PRESETS, preset)
  c.preset = preset
  return c


# Fine-tuning schedules per preset: steps, batch, eval cadence, learning rate, warmup.
FINETUNE_SCHEDULES: dict[str, dict[str, Any]] = {
    "tiny": {"num_train_steps": 10, "batch_size": 8, "eval_batch_size": 16,
             "eval_every_steps": 0, "checkpoint_every_steps": 10, "log_every_steps": 5,
             "optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 2},
    # demo: up to three passes over 3,500 train members (the 8,000-patient world has 3,442; the
    # main job caps train_examples there), the tuning loss measured every half pass (110 steps);
    # early stopping ends the run after two half passes without a lower tuning loss and
    # prediction uses the best checkpoint.
    "demo": {"num_train_steps": 660, "batch_size": 16, "eval_batch_size": 64,
             "eval_every_steps": 110, "checkpoint_every_steps": 110, "log_every_steps": 10,
             "optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 30,
             "early_stopping.patience": 2},
    "small": {"num_train_steps": 3000, "batch_size": 64, "eval_batch_size": 128,
              "eval_every_steps": 500, "checkpoint_every_steps": 500, "log_every_steps": 50,
              "optimizer.learning_rate": 3e-4, "optimizer.warmup_steps": 200},
    "base": {"num_train_steps": 5000, "batch_size": 128, "eval_batch_size": 256,
             "eval_every_steps": 1000, "checkpoint_every_steps": 1000, "log_every_steps": 50,
             "optimizer.learning_rate": 1e-4, "optimizer.warmup_steps": 300},
    "large": {"num_train_steps": 5000, "batch_size": 256, "eval_batch_size": 256,
              "eval_every_steps": 1000, "checkpoint_every_steps": 1000, "log_every_steps": 50,
              "optimizer.learning_rate": 5e-5, "optimizer.warmup_steps": 300},
}


def finetune_config(preset: str, task: str) -> ml_collections.ConfigDict:
  """What the cost and chronic configs share: the preset's model (so the pretraining checkpoint
  of the same preset loads), a fine-tuning schedule, the head. Unlocked: the task's config file
  adds its own block and locks it."""
  c = model_config(preset)
  c.task = task
  apply(c, FINETUNE_SCHEDULES, preset)
  c.model_name = "lmm_finetuned"    # predictions/TASK/MODEL_NAME.parquet
  c.predict_split = "held_out"
  c.stats_examples = 200_000        # train members read for the output scale / initial biases
  c.eval_batches = -1               # the whole tuning split
  c.pack = False                    # one member per row
  c.truncation = "recent"           # long histories keep their most recent events
  # Length buckets of TASK batches (train, eval, predict): a batch is padded to the smallest that
  # holds its longest history (histories are ~170 tokens at demo, seq_len 512); one compile per
  # bucket. Buckets >= seq_len are dropped (seq_len is always the last); () pads to seq_len.
  c.bucket_lengths = (c.seq_len // 4, c.seq_len // 2)
  c.optimizer.weight_decay = 0.01
  c.optimizer.backbone_lr_multiplier = 0.5
  c.optimizer.freeze_backbone = False
  c.head = ml_collections.ConfigDict()
  c.head.pooling = "last"           # 'last' history token or 'mean' over the history
  c.head.hidden_dim = c.model.d_model   # 0: a linear head
  c.head.dropout_rate = 0.0
  return c
