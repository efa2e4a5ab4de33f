"""Training tasks (`lmm_jax.train.task.Task` implementations): pretraining here, fine-tuning heads
beside it. Each plugs into `lmm_jax.train.trainer.train_and_evaluate`."""
