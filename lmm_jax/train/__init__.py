"""Generic training machinery: the Task interface, optimizer, checkpoints, metric writers and the
sharded, jitted training loop (`trainer.train_and_evaluate`), shared by pretraining and
fine-tuning."""
