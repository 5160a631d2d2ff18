"""Tests for mdm_jax.training.sharding on 8 fake CPU devices."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mdm_jax.training import optimizer as optimizer_lib
from mdm_jax.training import sharding
from tiny_mdm import RULES


class ToyMLP(nn.Module):
  """x (b, 16) -> relu(x W_in + b) W_out + odd-shaped side path, logically named."""

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.normal(0.5)
    w_in = self.param(
        "w_in", nn.with_logical_partitioning(init, ("embed", "mlp")), (16, 32))
    b_in = self.param(
        "bias", nn.with_logical_partitioning(init, ("mlp",)), (32,))
    w_out = self.param(
        "w_out", nn.with_logical_partitioning(init, ("mlp", "embed")), (32, 16))
    # 6 is not divisible by fsdp=4: must fall back to replication.
    w_odd = self.param(
        "w_odd", nn.with_logical_partitioning(init, ("embed", "mlp")), (6, 16))
    scale = self.param("scale", nn.initializers.ones, (16,))  # unboxed
    h = nn.with_logical_constraint(x @ w_in + b_in, ("activation_batch", "activation_mlp"))
    y = jax.nn.relu(h) @ w_out
    return (y + (x[:, :6] @ w_odd)) * scale


def numpy_forward(p, x):
  h = np.maximum(x @ p["w_in"] + p["bias"], 0.0)
  return (h @ p["w_out"] + x[:, :6] @ p["w_odd"]) * p["scale"]


def test_make_mesh_shapes_and_auto_axes():
  mesh = sharding.make_mesh(data=2, fsdp=4)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  if sharding.AxisType is not None:
    assert all(t == sharding.AxisType.Auto for t in mesh.axis_types)
  assert dict(sharding.make_mesh(data=-1, tensor=2).shape) == {
      "data": 4, "fsdp": 1, "tensor": 2}


@pytest.mark.parametrize("kwargs, match", [
    (dict(data=3), "product is the device count"),
    (dict(data=-1, fsdp=3), "cannot fill axis 'data'"),
    (dict(data=-1, fsdp=-1), "only one axis may be -1"),
    (dict(data=0), "positive int or -1"),
])
def test_make_mesh_bad_shape_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(**kwargs)


def test_params_fsdp_sharded_and_odd_param_replicated():
  mesh = sharding.make_mesh(data=2, fsdp=4)
  model = ToyMLP()
  x = jnp.zeros((8, 16))
  params = sharding.init_sharded(
      lambda r, x: model.init(r, x)["params"], jax.random.key(0), mesh, x, rules=RULES)
  assert params["w_in"].sharding.spec == P("fsdp", "tensor")
  assert params["w_out"].sharding.spec == P("tensor", "fsdp")
  # Per-device shard: embed dim split in 4, mlp dim whole (tensor=1).
  shard_shapes = {s.data.shape for s in params["w_in"].addressable_shards}
  assert shard_shapes == {(4, 32)}
  assert {s.data.shape for s in params["w_out"].addressable_shards} == {(32, 4)}
  # Odd dim -> embed axis dropped, whole param on every device.
  assert params["w_odd"].sharding.spec == P(None, "tensor")
  assert {s.data.shape for s in params["w_odd"].addressable_shards} == {(6, 16)}
  assert params["scale"].sharding.spec == P()
  assert {s.data.shape for s in params["scale"].addressable_shards} == {(16,)}


def test_tensor_axis_and_multi_axis_fallback():
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  s = sharding.logical_sharding(("embed", "mlp"), (16, 32), mesh, RULES)
  assert s.spec == P("fsdp", "tensor")
  assert s.shard_shape((16, 32)) == (8, 16)
  # batch maps to ("data", "fsdp") = 4 shards; a batch of 2 keeps only "data".
  act = ("activation_batch", "activation_embed")
  assert sharding.logical_sharding(act, (8, 16), mesh, RULES).spec == P(("data", "fsdp"), None)
  assert sharding.logical_sharding(act, (2, 16), mesh, RULES).spec == P("data", None)
  assert sharding.logical_sharding(("activation_batch",), (3,), mesh, RULES).spec == P(None)


def test_unknown_logical_name_is_a_clear_error():
  mesh = sharding.make_mesh()
  with pytest.raises(ValueError, match="Unknown logical axis name"):
    sharding.logical_sharding(("embd", "mlp"), (8, 8), mesh, RULES)


def test_sharded_forward_matches_numpy():
  mesh = sharding.make_mesh(data=2, fsdp=4)
  model = ToyMLP()
  x_np = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
  params = sharding.init_sharded(
      lambda r, x: model.init(r, x)["params"], jax.random.key(1), mesh,
      jnp.zeros((8, 16)), rules=RULES)
  x = sharding.shard_batch({"x": x_np}, mesh, RULES)["x"]
  assert x.sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in x.addressable_shards} == {(1, 16)}

  @jax.jit
  def forward(p, x):
    return model.apply({"params": p}, x)

  with sharding.mesh_context(mesh, RULES):
    y = forward(params, x)
  p_np = jax.tree.map(np.asarray, params)
  np.testing.assert_allclose(
      np.asarray(y), numpy_forward(p_np, x_np), rtol=1e-5, atol=1e-5)


def test_shard_batch_rejects_indivisible_batch():
  mesh = sharding.make_mesh(data=2, fsdp=4)
  with pytest.raises(ValueError, match="not divisible by the 8 batch shards"):
    sharding.shard_batch({"x": np.zeros((6, 2))}, mesh, RULES)


def test_train_state_opt_state_sharded_like_params():
  mesh = sharding.make_mesh(data=2, fsdp=4)
  model = ToyMLP()
  tx, _ = optimizer_lib.make_optimizer(
      lr=1e-3, warmup_steps=1, total_steps=10, weight_decay=0.1)

  def init_state(rng, x):
    params = model.init(rng, x)["params"]
    return {"params": params, "opt_state": tx.init(params), "step": 0}

  state = sharding.init_sharded(
      init_state, jax.random.key(0), mesh, jnp.zeros((8, 16)), rules=RULES)
  mu = state["opt_state"][1][0].mu  # chain(clip, adamw) -> adamw's ScaleByAdam.
  assert mu["w_in"].sharding.spec == P("fsdp", "tensor")
  assert {s.data.shape for s in mu["w_in"].addressable_shards} == {(4, 32)}
  assert state["step"].sharding.spec == P()
  abstract = sharding.abstract_sharded(
      init_state, jax.random.key(0), mesh, jnp.zeros((8, 16)), rules=RULES)
  assert abstract["params"]["w_in"].sharding.spec == P("fsdp", "tensor")


def test_jitted_train_step_keeps_fsdp_sharding():
  mesh = sharding.make_mesh(data=2, fsdp=4)
  model = ToyMLP()
  tx, _ = optimizer_lib.make_optimizer(
      lr=1e-2, warmup_steps=0, total_steps=10, weight_decay=0.1)

  def init_state(rng, x):
    params = model.init(rng, x)["params"]
    return {"params": params, "opt_state": tx.init(params), "ema": params}

  state = sharding.init_sharded(
      init_state, jax.random.key(0), mesh, jnp.zeros((8, 16)), rules=RULES)
  state_shardings = jax.tree.map(lambda a: a.sharding, state)

  def train_step(state, x):
    grads = jax.grad(
        lambda p: jnp.mean(model.apply({"params": p}, x) ** 2))(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema = optimizer_lib.ema_update(state["ema"], params, 0.99, step=0)
    return {"params": params, "opt_state": opt_state, "ema": ema}

  x = sharding.shard_batch(
      {"x": np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)},
      mesh, RULES)["x"]
  step = jax.jit(train_step, in_shardings=(state_shardings, x.sharding),
                 out_shardings=state_shardings, donate_argnums=0)
  before = np.asarray(state["params"]["w_in"])
  with sharding.mesh_context(mesh, RULES):
    new = step(state, x)
  assert new["params"]["w_in"].sharding.spec == P("fsdp", "tensor")
  assert {s.data.shape for s in new["ema"]["w_in"].addressable_shards} == {(4, 32)}
  # Adam's first step moves each weight by ~lr (|m_hat/sqrt(v_hat)| ~ 1).
  moved = np.abs(np.asarray(new["params"]["w_in"]) - before)
  assert np.all(moved > 1e-3) and np.all(moved < 2e-2)


def test_rules_name_exactly_the_logical_axes_the_model_uses(monkeypatch):
  """No dead rule and no name without one: the rule names are the axes the MDM's parameters
  carry, its activation constraints name, and the Pallas kernel splits by."""
  from mdm_jax.models.mdm import MDM
  from mdm_jax.ssm import kernel
  from tiny_mdm import abstract_inputs, tiny_config
  constrained = set()
  real = nn.with_logical_constraint

  def record(x, names, *args, **kwargs):
    constrained.update(n for n in names if n)
    return real(x, names, *args, **kwargs)

  monkeypatch.setattr(nn, "with_logical_constraint", record)
  weights = set()
  # Every optional parameter present: the SwiGLU MLP, row-end tokens, the LTI B and C.
  for cfg in (tiny_config(mlp_ratio=2.0, row_end_tokens=True, selective=False),
              tiny_config(backbone="transformer", mlp_ratio=2.0)):
    boxed = jax.eval_shape(MDM(cfg).init, *abstract_inputs(cfg))
    for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
      if isinstance(leaf, nn.LogicallyPartitioned):
        weights.update(n for n in leaf.names if n)
  assert constrained and all(n.startswith("activation_") for n in constrained), constrained
  assert not any(n.startswith("activation_") for n in weights), weights
  used = weights | constrained | {kernel.BATCH_AXIS, kernel.HEAD_AXIS}
  assert {name for name, _ in RULES} == used


def test_activations_stay_batch_split_where_fsdp_splits_the_weights():
  """The same d_model dimension: FSDP-split in a weight ("embed"), whole in an activation
  ("activation_embed"), whose batch takes both data-parallel axes."""
  mesh = sharding.make_mesh(data=2, fsdp=4)
  weight = sharding.logical_sharding(("embed", "mlp"), (16, 32), mesh, RULES)
  act = sharding.logical_sharding(
      ("activation_batch", "activation_length", "activation_embed"), (8, 5, 16), mesh, RULES)
  assert weight.spec == P("fsdp", "tensor")
  assert act.spec == P(("data", "fsdp"), None, None)


def test_trainer_shards_by_the_config_rules():
  """The rules come from the config: replicating "embed" there replicates every weight
  that FSDP split before; the batch split follows "activation_batch"."""
  from experiments import configs
  from mdm_jax.training.trainer import Trainer
  mesh = sharding.make_mesh(data=2, fsdp=4)
  config = configs.load("tiny")
  specs = lambda t: {s.spec for s in jax.tree.leaves(t.state_shardings["params"])}
  fsdp = Trainer(config, mesh, vocab_size=64, num_classes=10)
  assert any("fsdp" in jax.tree.leaves(tuple(s)) for s in specs(fsdp))
  assert fsdp.batch_sharding.spec == P(("data", "fsdp"))
  config.sharding.logical_axis_rules = tuple(
      (name, None) if name in ("embed", "activation_batch") else (name, axes)
      for name, axes in config.sharding.logical_axis_rules)
  replicated = Trainer(config, mesh, vocab_size=64, num_classes=10)
  assert not any("fsdp" in jax.tree.leaves(tuple(s)) for s in specs(replicated))
  assert replicated.batch_sharding.spec == P(None)


def test_rules_read_back_from_json_and_bad_rules_are_named():
  as_json = [[name, list(axes) if isinstance(axes, tuple) else axes] for name, axes in RULES]
  assert sharding.as_rules(as_json) == RULES
  with pytest.raises(ValueError, match=r"'embed' maps to mesh axes \['model'\]"):
    sharding.as_rules([("embed", "model")])
  with pytest.raises(ValueError, match="not a .logical name, mesh axes. pair"):
    sharding.as_rules([("embed",)])


# --- what the mesh could not split, said ----------------------------------------------------
ROWS_COLS = sharding.as_rules([("rows", ("data", "fsdp")), ("cols", "tensor")])


def _boxed(shape, dtype):
  return {"w": nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, dtype), ("rows", "cols"))}


def test_a_shortened_rule_is_reported_with_the_bytes_it_costs_each_device():
  """(6, 10) bf16 on data=2 x fsdp=2 x tensor=2: "rows" asks for 4 shards, 4 does not divide 6,
  so only "data" (2) is kept; "cols" splits 10 in 2. Each device holds 3 x 5 values where the
  full rule would leave 2 x 5: 5 values, 10 bytes, more."""
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  report = []
  shardings = sharding.param_shardings(_boxed((6, 10), jnp.bfloat16), mesh, ROWS_COLS, report)
  assert shardings["w"].spec == P("data", "tensor")
  [r] = report
  assert (r.name, r.dim, r.logical, r.wanted, r.kept) == (
      "['w']", 0, "rows", ("data", "fsdp"), ("data",))
  assert r.replicated_bytes == 2 * (3 - 2) * 5 == 10


def test_every_dropped_dimension_is_reported_and_the_limit_names_the_largest():
  """(6, 9) f32 on the same mesh: rows keep "data" (3 rows a device instead of 2), cols lose
  "tensor" (9 columns instead of 5). Per dimension, the other split as it is:
  rows 4 bytes x 9 columns x (3 - 2) = 36, cols 4 bytes x 3 rows x (9 - 5) = 48."""
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  report = []
  sharding.param_shardings(_boxed((6, 9), jnp.float32), mesh, ROWS_COLS, report)
  assert [(r.dim, r.kept, r.replicated_bytes) for r in report] == [
      (0, ("data",), 36), (1, (), 48)]
  text = sharding.format_replications(report)
  assert "2 dimension(s)" in text and "84 bytes per device in all" in text
  sharding.check_replications(report, 48)
  sharding.check_replications(report, None)
  with pytest.raises(ValueError, match=r"\['w'\] \(6, 9\) float32: dimension 1 \(rule 'cols'"
                     r"[\s\S]*max_replicated_bytes=47[\s\S]*multiple of 2"):
    sharding.check_replications(report, 47)


def test_the_trainer_logs_replicated_dimensions_once_and_refuses_them_over_the_limit(caplog):
  """tiny on fsdp=2 x tensor=4: the text vocabulary (vocab_size + the mask token = 65) is the
  one "vocab" dimension 4 does not divide. The score head's kernel (d_model 32, 65) then holds
  32/2 rows x 65 columns a device where the rule would leave 32/2 x ceil(65/4) = 17."""
  from experiments import configs
  from mdm_jax.training.trainer import Trainer
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
  config = configs.load("tiny")
  with caplog.at_level("WARNING"):
    trainer = Trainer(config, mesh, vocab_size=64, num_classes=10)
  logged = [r for r in caplog.records if "replicated against their sharding rule" in r.message]
  assert len(logged) == 1
  by_name = {r.name: r for r in trainer.replications}
  head = by_name["['params']['denoiser']['score_head']['kernel']"]
  d_model = config.model.d_model
  assert head.replicated_bytes == 4 * (d_model // 2) * (65 - 17)
  assert head.name in logged[0].message
  assert {r.logical for r in trainer.replications} == {"vocab"}
  config.sharding.max_replicated_bytes = head.replicated_bytes - 1
  with pytest.raises(ValueError, match=r"score_head[\s\S]*rule \('vocab', \('tensor',\)\)"):
    Trainer(config, mesh, vocab_size=64, num_classes=10)
