"""Each importer's MEDS output builds with data_prep.build_dataset, pretrains and fine-tunes the
cost head at the tiny preset (2 steps each: the code paths, not the quality)."""

import numpy as np
import pytest

from data_prep.configs import build_dataset as build_config
from data_prep.configs import claims_mapping
from experiments.configs import cost as cost_config
from experiments.configs import pretrain as pretrain_config
from lmm_jax import tasks
from lmm_jax.data import build
from lmm_jax.importers import claims
from lmm_jax.importers import fhir
from lmm_jax.importers import synthea
from lmm_jax.train import predict
from lmm_jax.train import trainer as trainer_lib
from tests.importers import worlds

NUM_MEMBERS = 120


def _claims_meds(src: str, out: str) -> dict:
  worlds.write_extract(src, worlds.members(NUM_MEMBERS, seed=3))
  return claims.import_claims(src, out, claims_mapping.get_config())


def _fhir_meds(src: str, out: str) -> dict:
  worlds.write_fhir(src, worlds.members(NUM_MEMBERS, seed=4))
  return fhir.import_fhir(src, out)


def _synthea_meds(src: str, out: str) -> dict:
  worlds.write_synthea(src, worlds.members(NUM_MEMBERS, seed=5))
  return synthea.import_synthea(src, out)


IMPORTERS = {"claims": _claims_meds, "fhir": _fhir_meds, "synthea": _synthea_meds}


@pytest.mark.time_limit(600)
@pytest.mark.parametrize("importer", sorted(IMPORTERS))
def test_imported_meds_builds_pretrains_and_finetunes_cost(importer, tmp_path):
  meds = str(tmp_path / "meds")
  report = IMPORTERS[importer](str(tmp_path / "src"), meds)
  assert report["subjects_written"] == NUM_MEMBERS
  data = str(tmp_path / "records")
  config = build_config.get_config()
  config.update_from_flattened_dict({"num_workers": 1, "progress": False, "min_code_count": 1})
  built = build.build_dataset(meds, data, config)
  assert sum(built["task_examples"].values()) > 0
  assert built["rows_by_system"].get("ICD10CM", 0) > 0 or importer == "synthea"

  pre = str(tmp_path / "pretrain")
  pconfig = pretrain_config.get_config("tiny")
  pconfig.update_from_flattened_dict({"data_dir": data, "num_train_steps": 2,
                                      "checkpoint_every_steps": 2, "eval_batches": 1,
                                      "progress": False})
  trainer_lib.train_and_evaluate(pconfig, pre, tasks.make_task(pconfig))
  cconfig = cost_config.get_config("tiny")
  cconfig.update_from_flattened_dict({"data_dir": data, "init_from": pre, "num_train_steps": 2,
                                      "checkpoint_every_steps": 2, "log_every_steps": 1,
                                      "progress": False})
  final = predict.train_and_predict(cconfig, str(tmp_path / "cost"))
  assert np.isfinite(final["eval_mae"]) and final["step"] == 2
