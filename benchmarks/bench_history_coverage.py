"""How much of a member's history a context length keeps, and how long real 12-month futures are.

  python benchmarks/bench_history_coverage.py --data_dir=RECORDS [--seq_lens=256,512,1024]
      [--caps=160,256,512]

Over the task records of every split (the builder's output): per context length L, the share of
members whose truncated input ('recent': the demographic prefix, then the latest events up to the
anchor) holds their whole year before the index, and their whole history; per token cap T, the
share of members whose real target year (their timeline's tokens in [index, index + 365 d)) has
more than T tokens, i.e. would be cut by a T-token cap on a generated future.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmm_jax import conventions  # pylint: disable=wrong-import-position
from lmm_jax.data import records  # pylint: disable=wrong-import-position

_DATA = flags.DEFINE_string("data_dir", None, "the dataset builder's output", required=True)
_SEQ = flags.DEFINE_list("seq_lens", ["256", "384", "512", "768", "1024"], "context lengths")
_CAPS = flags.DEFINE_list("caps", ["160", "256", "384", "512", "768"], "future token caps")


def measure(data_dir: str) -> dict[str, np.ndarray]:
  """Per task member: history tokens, tokens needed for the last year, target-year tokens."""
  future_tokens = {}
  for split in conventions.SPLITS:
    for r in records.read_records(data_dir, records.TIMELINE, split):
      future_tokens[int(r["subject_id"])] = np.asarray(r["days"])
  hist, year, future = [], [], []
  for split in conventions.SPLITS:
    for r in records.read_records(data_dir, records.TASK, split):
      index, days, p = int(r["index_day"]), np.asarray(r["days"]), int(r["prefix_len"])
      hist.append(days.size)
      year.append(p + int((days[p:] >= index - conventions.TARGET_WINDOW_DAYS).sum()))
      tl = future_tokens[int(r["subject_id"])]
      future.append(int(((tl >= index) & (tl < index + conventions.TARGET_WINDOW_DAYS)).sum()))
  return {"history": np.array(hist), "year": np.array(year), "future": np.array(future)}


def main(argv):
  del argv
  m = measure(_DATA.value)
  n = m["history"].size
  print(f"{n} task members of {_DATA.value}")
  q = {p: int(np.percentile(m["history"], p)) for p in (50, 90, 99)}
  print(f"history tokens (with the anchor) P50/P90/P99: {q[50]}/{q[90]}/{q[99]}")
  print("| context | whole last year kept | whole history kept |\n|---:|---:|---:|")
  for s in map(int, _SEQ.value):
    print(f"| {s} | {(m['year'] <= s).mean():.2%} | {(m['history'] <= s).mean():.2%} |")
  q = {p: int(np.percentile(m["future"], p)) for p in (50, 90, 99)}
  print(f"\ntarget-year tokens P50/P90/P99: {q[50]}/{q[90]}/{q[99]}")
  print("| token cap | members whose real year is longer |\n|---:|---:|")
  for c in map(int, _CAPS.value):
    print(f"| {c} | {(m['future'] > c).mean():.2%} |")


if __name__ == "__main__":
  app.run(main)
