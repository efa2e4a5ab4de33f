"""Hand-made timeline and task records with known signal (no synthesizer needed).

Reuses the members of tests/baselines/fake_data.py (diabetic members cost more and keep diabetes
coded) and writes both record kinds, so a tiny pretrain -> fine-tune chain runs on them.
"""

from __future__ import annotations

import json
import os

import numpy as np

from lmm_jax.data import records
from lmm_jax.data.vocab import Vocabulary
from tests.baselines import fake_data


def write_records(root: str, sizes=(("train", 240), ("tuning", 48), ("held_out", 52)),
                  seed: int = 0) -> str:
  """Writes DATA_DIR (returned): vocab.json, report.json, timeline/ and task/ shards."""
  rng = np.random.default_rng(seed)
  data_dir = os.path.join(root, "records")
  entries = [{"token": t, "kind": k, "system": s, "count": 1} for t, k, s in fake_data.TOKENS]
  Vocabulary(entries).save(os.path.join(data_dir, records.VOCAB_FILE))
  with open(os.path.join(data_dir, records.REPORT_FILE), "w") as f:
    json.dump({"meds_dir": ""}, f)
  next_id = 1000
  for split, n in sizes:
    name = records.shard_name(split, 0, 1)
    with records.ShardWriter(os.path.join(data_dir, records.TASK, name)) as task, \
        records.ShardWriter(os.path.join(data_dir, records.TIMELINE, name)) as timeline:
      for _ in range(n):
        rec, _ = fake_data.make_member(rng, next_id)
        next_id += int(rng.integers(1, 50))
        task.write(rec)
        timeline.write({k: rec[k] for k in records.TIMELINE_FIELDS})
  return data_dir
