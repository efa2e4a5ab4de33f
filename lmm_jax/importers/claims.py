"""Claims extracts (claim header and claim line tables, CSV or parquet) -> claims MEDS.

The shape of 837-derived warehouse tables: a header row per claim (member, dates, claim type,
place of service, diagnosis positions, ICD procedure positions, claim amounts), line rows
(service date, CPT / HCPCS, NDC, line place of service, line amounts), and optionally member and
enrollment tables. Which column holds what is the mapping config (`data_prep/configs/
claims_mapping.py`, documented in docs/data.md). Line tables must carry the member id column
too (warehouse line tables do), so that rows can be bucketed by member without a join.
"""

from __future__ import annotations

import glob
import os
import types
from typing import Callable, Optional

import ml_collections

from lmm_jax import conventions as conv
from lmm_jax.data import code_systems
from lmm_jax.importers import common

ETL_NAME = "lmm_jax.importers.claims"
_TABLES = ("headers", "lines", "members", "enrollment")
_SYSTEMS = (conv.ICD10CM, conv.ICD9CM)


def _files(input_dir: str, pattern: str) -> list[str]:
  return sorted(glob.glob(os.path.join(input_dir, pattern))) if pattern else []


class _Converter:
  """Turns one table row into MEDS rows (or a drop reason) for the mapping."""

  def __init__(self, mapping: ml_collections.ConfigDict, writer: common.MEDSWriter,
               acct: common.Accounting):
    # Plain namespaces: a ConfigDict attribute read costs microseconds, per row and field.
    self.m = types.SimpleNamespace(**{
        k: types.SimpleNamespace(**v.to_dict()) if isinstance(v, ml_collections.ConfigDict)
        else v for k, v in mapping.items()})
    self.w, self.acct = writer, acct
    self.what = "row" if mapping.format == "parquet" else "line"  # how errors number records
    if mapping.diagnosis_system not in _SYSTEMS:
      raise ValueError(f"mapping.diagnosis_system must be one of {_SYSTEMS}, got "
                       f"{mapping.diagnosis_system!r}")
    if mapping.amounts_from not in ("headers", "lines"):
      raise ValueError(f"mapping.amounts_from must be 'headers' or 'lines' (the other table's "
                       f"amounts would count twice), got {mapping.amounts_from!r}")
    self.claim_types = {str(k): v for k, v in mapping.claim_type_values.items()}
    bad = sorted(set(self.claim_types.values()) - set(conv.CLAIM_TYPES))
    if bad:
      raise ValueError(f"mapping.claim_type_values maps onto {bad}; claim types are "
                       f"{conv.CLAIM_TYPES}")
    self.lobs = {str(k): v for k, v in mapping.lob_values.items()}

  def _member_claim(self, t, row, path, line, with_claim: bool = True):
    member = common.text(row[t.member_id])
    if not member:
      return "no_member_id", None, None
    claim = None
    if with_claim:
      key = common.text(row[t.claim_id])
      if not key:
        return "no_claim_id", None, None
      claim = self.w.claim(key)
    return None, self.w.subject(member), claim

  def _amounts(self, t, row, path, line, sid, day, claim) -> None:
    for field, code in (("allowed", conv.COST_ALLOWED_CODE), ("paid", common.COST_PAID_CODE)):
      col = getattr(t, field, "")
      if col:
        amount = common.parse_amount(row[col], path, line, col, self.what)
        if amount is not None:
          self.w.add(sid, day, code, amount, claim)

  def _pos(self, value) -> Optional[str]:
    v = common.text(value)
    return f"{conv.POS}{conv.SEP}{v.zfill(2) if v.isdigit() else v.upper()}" if v else None

  def header(self, path: str, line: int, row: dict) -> Optional[str]:
    t = self.m.headers
    reason, sid, claim = self._member_claim(t, row, path, line)
    if reason:
      return reason
    day = common.cell_day(row[t.from_date], path, line, t.from_date, self.what)
    if day is None:
      return "no_service_date"
    if t.claim_type:
      value = common.text(row[t.claim_type])
      if value not in self.claim_types:
        raise common.InputFormatError(
            path, f"claim type {value[:20]!r} is not in mapping.claim_type_values "
            f"({sorted(self.claim_types)})", line, t.claim_type, self.what)
      self.w.add(sid, day, f"{conv.CLAIM}{conv.SEP}{self.claim_types[value]}", None, claim)
    if t.place_of_service and (pos := self._pos(row[t.place_of_service])):
      self.w.add(sid, day, pos, None, claim)
    for col in t.diagnosis:
      code = common.text(row[col]).upper()
      if code:
        self.w.add(sid, day, f"{self.m.diagnosis_system}{conv.SEP}{code}", None, claim)
    for col in t.icd_procedures:
      code = common.text(row[col]).upper().replace(".", "")
      if code:
        self.w.add(sid, day, f"{conv.ICD10PCS}{conv.SEP}{code}", None, claim)
    if self.m.amounts_from == "headers":
      self._amounts(t, row, path, line, sid, day, claim)
    return None

  def line(self, path: str, line: int, row: dict) -> Optional[str]:
    t = self.m.lines
    reason, sid, claim = self._member_claim(t, row, path, line)
    if reason:
      return reason
    # A line without its own date takes its claim's (every claim row gets the earliest date).
    day = common.cell_day(row[t.service_date], path, line, t.service_date, self.what) if (
        t.service_date) else None
    if t.procedure and (raw := common.text(row[t.procedure])):
      code = common.procedure_code(raw)
      if code:
        self.w.add(sid, day, code, None, claim)
      else:
        self.acct.notes["procedure_not_cpt_or_hcpcs"] += 1
    if t.ndc and (raw := common.text(row[t.ndc])):
      ndc = code_systems.normalize_ndc(raw)
      if ndc:
        self.w.add(sid, day, f"{conv.NDC}{conv.SEP}{ndc}", None, claim)
      else:
        self.acct.notes["ndc_not_an_ndc"] += 1
    if t.place_of_service and (pos := self._pos(row[t.place_of_service])):
      self.w.add(sid, day, pos, None, claim)
    if self.m.amounts_from == "lines":
      self._amounts(t, row, path, line, sid, day, claim)
    return None

  def member(self, path: str, line: int, row: dict) -> Optional[str]:
    t = self.m.members
    reason, sid, _ = self._member_claim(t, row, path, line, with_claim=False)
    if reason:
      return reason
    def day(col: str) -> Optional[int]:
      return common.cell_day(row[col], path, line, col, self.what) if col else None
    birth = day(t.birth_date)
    sex = common.sex_code(common.text(row[t.sex])) if t.sex else None
    death = day(t.death_date)
    return self.w.add_member(sid, birth, sex, death)

  def enrollment(self, path: str, line: int, row: dict) -> Optional[str]:
    t = self.m.enrollment
    reason, sid, _ = self._member_claim(t, row, path, line, with_claim=False)
    if reason:
      return reason
    start = common.cell_day(row[t.start_date], path, line, t.start_date, self.what)
    if start is None:
      return "no_enrollment_start"
    end = common.cell_day(row[t.end_date], path, line, t.end_date, self.what) if (
        t.end_date) else None
    raw = common.text(row[t.line_of_business]) if t.line_of_business else ""
    lob = self.lobs.get(raw) or (code_systems.lob_of(raw) if raw else self.m.default_lob)
    self.w.add(sid, start, conv.enrollment_code("START", lob))
    if end is not None:
      self.w.add(sid, end, conv.enrollment_code("END", lob))
    return None


def _columns(t: ml_collections.ConfigDict) -> list[str]:
  cols = []
  for v in t.values():
    if isinstance(v, str):
      cols.append(v)
    elif isinstance(v, (tuple, list)):
      cols.extend(v)
  return [c for c in cols if c and c != t.files]


def import_claims(input_dir: str, output_dir: str, mapping: ml_collections.ConfigDict, *,
                  shard_input_mb: float = 64.0, id_key: bytes = b"") -> dict:
  """Converts the extract's tables under input_dir to a claims MEDS dataset; returns the report."""
  files = {name: _files(input_dir, mapping[name].files) for name in _TABLES}
  if not files["headers"] and not files["lines"]:
    raise ValueError(f"{input_dir}: no claim header or line files match mapping.headers.files "
                     f"({mapping.headers.files!r}) or mapping.lines.files "
                     f"({mapping.lines.files!r})")
  all_files = [p for name in _TABLES for p in files[name]]
  with common.MEDSWriter(output_dir, common.shards_for(all_files, shard_input_mb),
                         id_key=id_key) as writer:
    acct = common.Accounting()
    conv_ = _Converter(mapping, writer, acct)
    handlers: dict[str, Callable] = {"headers": conv_.header, "lines": conv_.line,
                                     "members": conv_.member, "enrollment": conv_.enrollment}
    for name in _TABLES:
      table = mapping[name]
      for path in files[name]:
        source = os.path.relpath(path, input_dir)
        for line, row in common.iter_table(path, mapping.format, _columns(table)):
          reason = handlers[name](path, line, row)
          if reason:
            acct.dropped(source, reason)
          else:
            acct.converted(source)
    return writer.finish({"dataset_name": mapping.dataset_name, "etl_name": ETL_NAME,
                          "source": f"claims extract ({mapping.format}) mapped by "
                                    f"{mapping.mapping_name}"}, acct)
