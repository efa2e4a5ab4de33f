"""The dataset build as an Apache Beam pipeline (`data_prep.build_dataset --engine=beam`).

The second driver of `lmm_jax.data.build`: the per-shard code (cleaning, tokenization, labels:
`build.shard_counts`, `build.shard_records`), the vocabulary fit between the passes, the report,
the lock, the temporary directory and the manifest are the local builder's; only how the passes
run differs. Two pipelines, run one after the other with the caller's pipeline options (any
runner: DirectRunner here, Dataflow, Flink or Spark on a cluster):
  pass 1: input files -> reshuffle -> counts per file -> CombineGlobally (`build.merge_pass1`: the
          train code counts, the cost and value samples) -> one file the driver reads and fits
          the vocabulary from (the same code as the local builder).
  pass 2: input files -> reshuffle -> records per file, one output per (kind, split) into
          array_record's WriteToArrayRecord sink (its shards `SPLIT-SSSSS-of-NNNNN.array_record`
          under timeline/ and task/, as the local builder names them, though their number is the
          runner's), and the file's counts -> CombineGlobally (`build.merge_pass2`). The row
          accounting (input rows, used rows, dropped rows by reason) is also counted in Beam
          counters; report.json takes it from the counters, checked against the combined counts.
A unit of work is one MEDS data file (MEDS keeps a subject's rows in one file), so parallelism is
bounded by the number of files. Input, output and `--temp_location` must be paths every worker and
the driver can open as files (BUILD.md: a shared mount on a cluster).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import pickle
import shutil
import tempfile
import uuid
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import PipelineOptions
from array_record.beam.arrayrecordio import WriteToArrayRecord

from lmm_jax import conventions
from lmm_jax.data import build
from lmm_jax.data import records

COUNTERS = "lmm_jax.build"  # the Beam counters' namespace
_ACCOUNTING = ("input_rows", "used_rows")  # counters besides dropped.REASON


class _CountShard(beam.DoFn):
  """Pass 1 of one input file."""

  def __init__(self, ctx: build._Context):  # pylint: disable=protected-access
    self._ctx = ctx

  def setup(self) -> None:
    build.worker_setup(self._ctx)

  def process(self, path: str) -> Iterator[dict[str, Any]]:
    yield build.pass1_total(build.shard_counts(path))


class _Pass1Combine(beam.CombineFn):
  """The vocabulary counting over the train split (and the cost and value samples)."""

  def __init__(self, cfg: dict[str, Any]):
    self._cfg = cfg

  def create_accumulator(self) -> dict[str, Any]:
    return build.new_pass1_total()

  def add_input(self, acc, total):
    return build.merge_pass1(acc, total, self._cfg)

  def merge_accumulators(self, accs):
    accs = iter(accs)
    acc = next(accs)
    for other in accs:
      build.merge_pass1(acc, other, self._cfg)
    return acc

  def extract_output(self, acc):
    return acc


def _tag(kind: str, split: str) -> str:
  return f"{kind}_{split}"


class _ShardRecords(beam.DoFn):
  """Pass 2 of one input file: its encoded records to one tagged output per (kind, split), its
  counts to the main output and its row accounting to the counters."""

  def __init__(self, ctx: build._Context):  # pylint: disable=protected-access
    self._ctx = ctx
    self._counters = {k: Metrics.counter(COUNTERS, k) for k in _ACCOUNTING}
    self._counters.update({f"dropped.{r}": Metrics.counter(COUNTERS, f"dropped.{r}")
                           for r in build.DROP_REASONS})

  def setup(self) -> None:
    build.worker_setup(self._ctx, pass2=True)

  def process(self, path: str) -> Iterator[Any]:
    out = build.new_pass2_counts()
    for kind, split, record in build.shard_records(path, out):
      yield beam.pvalue.TaggedOutput(_tag(kind, split), records.encode(record))
    for k in _ACCOUNTING:
      self._counters[k].inc(out[k])
    for reason, n in out["dropped"].items():
      self._counters[f"dropped.{reason}"].inc(n)
    yield out


class _Pass2Combine(beam.CombineFn):

  def create_accumulator(self):
    return None

  def add_input(self, acc, counts):
    return counts if acc is None else build.merge_pass2(acc, counts)

  def merge_accumulators(self, accs):
    acc = None
    for other in accs:
      if other is not None:
        acc = other if acc is None else build.merge_pass2(acc, other)
    return acc

  def extract_output(self, acc):
    return acc


def _save(path: str):
  def write(value: Any) -> None:
    with FileSystems.create(path) as f:
      f.write(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
  return write


def _load(path: str) -> Any:
  with FileSystems.open(path) as f:
    value = pickle.loads(f.read())
  FileSystems.delete([path])
  return value


def _counters(result: Any) -> dict[str, int]:
  """The pipeline's committed counters (attempted where a runner commits none)."""
  out = {}
  for c in result.metrics().query(MetricsFilter().with_namespace(COUNTERS))["counters"]:
    value = c.committed if c.committed is not None else c.attempted
    out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
  return out


def accounting_from_counters(counters: dict[str, int], counts: dict[str, Any]) -> None:
  """Puts the counters' row accounting into the combined pass-2 counts, after checking that
  the two agree (a runner that re-ran a bundle must not count its rows twice)."""
  dropped = {r: counters.get(f"dropped.{r}", 0) for r in build.DROP_REASONS}
  combined = {r: int(counts["dropped"].get(r, 0)) for r in build.DROP_REASONS}
  got = {k: counters.get(k, 0) for k in _ACCOUNTING}
  want = {k: int(counts[k]) for k in _ACCOUNTING}
  if dropped != combined or got != want:
    raise AssertionError(f"Beam counters {got} {dropped} disagree with the combined counts "
                         f"{want} {combined}")
  counts.update(got)
  counts["dropped"] = collections.Counter(dropped)


def beam_engine(pipeline_args: list[str]) -> build.Engine:
  """A `build.build_dataset` engine running both passes as Beam pipelines with these options
  (e.g. ["--runner=DirectRunner", "--direct_num_workers=2",
  "--direct_running_mode=multi_processing"])."""
  options = PipelineOptions(pipeline_args)

  @contextlib.contextmanager
  def engine(ctx: build._Context, paths: list[str]):  # pylint: disable=protected-access
    # Where the combined counts go for the driver to read: --temp_location (shared storage on a
    # cluster) or, by default, a local temporary directory.
    temp_location = options.view_as(GoogleCloudOptions).temp_location
    local_tmp = None if temp_location else tempfile.mkdtemp(prefix="lmm_jax_beam-")
    scratch = temp_location or local_tmp
    run_id = uuid.uuid4().hex

    def run_pass(name: str, ctx_: build._Context, fn: beam.DoFn, combine: beam.CombineFn,
                 sinks: bool) -> tuple[Any, dict[str, int]]:
      path = FileSystems.join(scratch, f"lmm_jax_build-{run_id}-{name}.pkl")
      with beam.Pipeline(options=options) as p:
        files = p | f"{name}: files" >> beam.Create(paths) | f"{name}: spread" >> beam.Reshuffle()
        if sinks:
          tags = [_tag(k, s) for k in (records.TIMELINE, records.TASK) for s in conventions.SPLITS]
          outs = files | f"{name}: per file" >> beam.ParDo(fn).with_outputs(*tags, main="counts")
          for kind in (records.TIMELINE, records.TASK):
            for split in conventions.SPLITS:
              _ = outs[_tag(kind, split)] | f"write {kind}/{split}" >> WriteToArrayRecord(
                  os.path.join(ctx_.output_dir, kind, split),
                  file_name_suffix=records.SHARD_SUFFIX)
          counts = outs["counts"]
        else:
          counts = files | f"{name}: per file" >> beam.ParDo(fn)
        _ = (counts | f"{name}: combine" >> beam.CombineGlobally(combine)
             | f"{name}: save" >> beam.Map(_save(path)))
      return _load(path), _counters(p.result)

    def pass1() -> dict[str, Any]:
      return run_pass("pass1", ctx, _CountShard(ctx), _Pass1Combine(ctx.config), False)[0]

    def pass2(ctx2: build._Context) -> dict[str, Any]:  # pylint: disable=protected-access
      ctx2 = dataclasses.replace(ctx2, splits=ctx.splits)
      counts, counters = run_pass("pass2", ctx2, _ShardRecords(ctx2), _Pass2Combine(), True)
      accounting_from_counters(counters, counts)
      return counts

    try:
      yield pass1, pass2
    finally:
      if local_tmp:
        shutil.rmtree(local_tmp, ignore_errors=True)

  return engine


def build_dataset(meds_dir: str, output_dir: str, config: Any,
                  pipeline_args: list[str]) -> dict[str, Any]:
  """`build.build_dataset` with both passes on Beam (the same output and report)."""
  return build.build_dataset(meds_dir, output_dir, config, engine=beam_engine(pipeline_args))
