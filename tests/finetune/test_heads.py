"""Heads and losses of the fine-tuning tasks, without a dataset."""

import math
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import chronic as chronic_config
from experiments.configs import cost as cost_config
from lmm_jax import conditions
from experiments import sweeps
from lmm_jax import tasks
from lmm_jax.model import heads
from lmm_jax.tasks import losses


class _Vocab:
  size = 40


def _stats(n: int = 50) -> dict:
  rng = np.random.default_rng(0)
  cost = rng.gamma(0.5, 8000.0, size=n)
  return {"cost": cost, "cost_capped": np.minimum(cost, 250_000.0),
          "cond": (rng.random((n, conditions.NUM_CONDITIONS)) < 0.2).astype(np.uint8)}


def _batch(rng: np.random.Generator, b: int = 4, l: int = 12) -> dict:
  length = rng.integers(2, l + 1, size=b).astype(np.int32)
  pos = np.arange(l)[None, :]
  seg = (pos < length[:, None]).astype(np.int32)
  cost = rng.gamma(0.5, 8000.0, size=b).astype(np.float32)
  return {"tokens": (rng.integers(1, _Vocab.size, size=(b, l)) * seg).astype(np.int32),
          "segment_ids": seg, "positions": (pos * seg).astype(np.int32),
          "age": (50.0 * seg).astype(np.float32), "days": (pos * 10.0 * seg).astype(np.float32),
          "length": length, "valid": np.ones(b, np.int32), "cost_next": cost,
          "cost_next_capped": np.minimum(cost, 250_000.0),
          "cond_next": (rng.random((b, conditions.NUM_CONDITIONS)) < 0.3).astype(np.int32),
          "cond_prior": (rng.random((b, conditions.NUM_CONDITIONS)) < 0.3).astype(np.int32),
          "calib": np.zeros(b, np.int32)}


def _cost_task(loss: str) -> tasks.CostTask:
  config = cost_config.get_config("tiny")
  config.update_from_flattened_dict({"cost.loss": loss, "model.num_layers": 1})
  return tasks.CostTask(config, vocab=_Vocab(), stats=_stats())


def test_tweedie_and_poisson_match_hand_computed_values():
  eta, y = jnp.array([math.log(2.0)]), jnp.array([3.0])
  # -3 * 2^-0.5 / -0.5 + 2^0.5 / 0.5 = 6 / sqrt(2) + 2 sqrt(2)
  np.testing.assert_allclose(losses.tweedie_nll(eta, y, 1.5),
                             [6 / math.sqrt(2) + 2 * math.sqrt(2)], rtol=1e-6)
  np.testing.assert_allclose(losses.poisson_nll(eta, y), [2.0 - 3.0 * math.log(2.0)], rtol=1e-6)
  np.testing.assert_allclose(losses.huber(jnp.array([0.5, -3.0]), 1.0), [0.125, 2.5])
  np.testing.assert_allclose(losses.pinball(jnp.array([1.0, 1.0]), jnp.array([0.0, 2.0]), 0.9),
                             [0.9, 0.1], rtol=1e-6)
  # The Tweedie and Poisson minimizers over a constant are the mean of y.
  ys = jnp.array([0.0, 1.0, 5.0])
  for f in (lambda e: losses.tweedie_nll(e, ys, 1.5).mean(),
            lambda e: losses.poisson_nll(e, ys).mean()):
    np.testing.assert_allclose(jax.grad(f)(jnp.log(2.0)), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="power"):
    losses.tweedie_nll(eta, y, 2.5)


def test_pool_last_reads_the_last_real_token():
  h = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
  seg = jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
  last = heads.pool(h, seg, jnp.array([2, 5]), "last")
  np.testing.assert_array_equal(last, np.stack([h[0, 1], h[1, 4]]))
  mean = heads.pool(h, seg, jnp.array([2, 5]), "mean")
  np.testing.assert_allclose(mean, np.stack([h[0, :2].mean(0), h[1].mean(0)]))


def _jitted_eval(task, model):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda st, b: task.eval_step(nnx.merge(graphdef, st), b))
  loss = jax.jit(lambda st, b: task.loss_fn(nnx.merge(graphdef, st), b, train=False, rng=None))
  return state, fn, loss


@pytest.mark.parametrize("loss", ["tweedie", "huber_log1p"])
def test_cost_head_outputs_positive_dollars_and_ignores_padding(loss):
  task = _cost_task(loss)
  model = task.build_model(nnx.Rngs(0), 8)
  state, eval_fn, loss_fn = _jitted_eval(task, model)
  rng = np.random.default_rng(1)
  batch = {k: jnp.asarray(v) for k, v in _batch(rng).items()}
  metrics, outputs = eval_fn(state, batch)
  # At initialization the mean prediction is near the train scale (bias = base rate).
  if loss in ("tweedie", "poisson", "mse"):
    np.testing.assert_allclose(np.asarray(outputs["pred"]), task.scale, rtol=0.2)
  # Extreme raw outputs still map to finite, non-negative dollars, quantiles in order.
  for extreme in (0.0, -1e4, 1e4):
    st = jax.tree.map(lambda x: x, state)
    bias = st["head"]["out_bias"]
    bias[...] = bias[...] + extreme
    _, out = eval_fn(st, batch)
    out = {k: np.asarray(v) for k, v in out.items()}
    smear = task.smearing(out, np.ones(len(out["y"]), bool)) if task.calibrate else {}
    dollars = task.dollars(out, {k: min(v, 10.0) for k, v in smear.items()})
    for key, v in dollars.items():
      assert np.all(np.isfinite(v)) and np.all(v >= 0), (key, extreme, v)
    assert np.all(dollars["y_pred_capped"] <= 250_000.0)
    assert np.all(dollars["y_p10"] <= dollars["y_p50"])
    assert np.all(dollars["y_p50"] <= dollars["y_p90"])
  # A padding row with an absurd target changes nothing.
  padded = {}
  for k, v in batch.items():
    extra = jnp.zeros_like(v[:1])
    padded[k] = jnp.concatenate([v, extra + 1e9 if k == "cost_next" else extra])
  loss_a, _ = loss_fn(state, batch)
  loss_b, m_b = loss_fn(state, padded)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
  assert float(m_b["loss"][1]) == 4.0
  assert float(metrics["loss"][1]) == 4.0


@pytest.mark.parametrize("loss", ["poisson", "mse"])
def test_mean_prediction_is_positive_dollars(loss):
  task = _cost_task(loss)
  o = jnp.array([-1e4, -3.0, 0.0, 3.0, 1e4])
  predict = task._mean_prediction  # pylint: disable=protected-access
  p = np.asarray(predict(o, task.scale, task.z_mean))
  assert np.all(np.isfinite(p)) and np.all(p >= 0) and np.all(np.diff(p) >= 0)
  # The initial bias predicts the train mean.
  b = task.output_bias()[task.col["mean"]]
  np.testing.assert_allclose(predict(jnp.array([b]), task.scale, task.z_mean), [task.scale],
                             rtol=1e-5)


def test_chronic_head_starts_at_train_prevalence_and_finalizes_new_onset_metrics():
  config = chronic_config.get_config("tiny")
  config.model.num_layers = 1
  stats = _stats(200)
  task = tasks.ChronicTask(config, vocab=_Vocab(), stats=stats)
  model = task.build_model(nnx.Rngs(0), 8)
  state, eval_fn, _ = _jitted_eval(task, model)
  rng = np.random.default_rng(2)
  batch = {k: jnp.asarray(v) for k, v in _batch(rng, b=8).items()}
  _, outputs = eval_fn(state, batch)
  prevalence = stats["cond"].mean(axis=0)
  np.testing.assert_allclose(np.asarray(outputs["prob"]).mean(axis=0), prevalence, atol=0.05)
  n = 60
  y = (rng.random((n, conditions.NUM_CONDITIONS)) < 0.4).astype(np.int32)
  prior = (rng.random((n, conditions.NUM_CONDITIONS)) < 0.3).astype(np.int32)
  prob = np.clip(0.6 * y + 0.2 * rng.random(y.shape), 0, 1)
  valid = np.ones(n, np.int32)
  valid[-5:] = 0
  y[-5:] = 1 - y[-5:]  # padding rows with wrong labels must not count
  m = task.finalize_eval({"loss": 0.1}, {"valid": valid, "prob": prob, "cond_next": y,
                                         "cond_prior": prior})
  assert m["macro_auroc"] == pytest.approx(1.0)
  assert m["macro_auroc_new_onset"] == pytest.approx(1.0)
  assert m["n"] == n - 5 and "brier" in m and "auroc/diabetes_t2" in m


def test_configs_are_locked_and_sweeps_name_real_keys():
  for module, metric in ((cost_config, "eval_nmae"), (chronic_config, "eval_macro_auroc")):
    assert module.BINARY == "experiments.finetune" and module.SWEEP_METRIC[0] == metric
    for preset in ("tiny", "demo", "small", "base", "large"):
      config = module.get_config(preset)
      assert config.preset == preset and config.model_name == "lmm_finetuned"
      with pytest.raises(AttributeError):
        config.modle = 1
    config = module.get_config("demo")
    points = list(module.sweep("demo"))
    assert len(points) >= 4
    for point in points:
      for key, value in point.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
          node = node[p]
        assert leaf in node and type(node[leaf]) is type(value), key


def test_sweep_runner_expands_the_declared_points():
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for name, n in (("cost", 4), ("chronic", 4)):
    module = sweeps.load_config_module(os.path.join(root, "experiments", "configs", f"{name}.py"))
    points = sweeps.expand(module, "tiny")
    assert len(points) == n and len({p.name for p in points}) == n


def test_point_estimate_p50_uses_the_median_output():
  config = cost_config.get_config("tiny")
  config.cost.point_estimate = "p50"
  task = tasks.CostTask(config, vocab=_Vocab(), stats=_stats())
  z = np.log1p(np.array([100.0, 5000.0, 1e6]))
  out = {"pred": np.array([1.0, 2.0, 3.0]), "pred_capped": np.array([1.0, 2.0, 3.0]),
         "p10": z - 1, "p50": z, "p90": z + 1}
  dollars = task.dollars(out, {})
  np.testing.assert_allclose(dollars["y_pred"], [100.0, 5000.0, 1e6], rtol=1e-9)
  np.testing.assert_allclose(dollars["y_pred_capped"], [100.0, 5000.0, 250_000.0], rtol=1e-9)
  config.cost.quantiles = False
  with pytest.raises(ValueError, match="p50"):
    tasks.CostTask(config, vocab=_Vocab(), stats=_stats())
