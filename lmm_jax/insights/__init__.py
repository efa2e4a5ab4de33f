"""Insights into a fine-tuned model: attributions, code embeddings, condition relationships.

Entry point: `lmm_jax.insights.report.write_insights_report(workdir, finetune_workdir, data_dir)`.
"""
