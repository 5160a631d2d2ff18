"""Tests for mdm_jax.training.checkpoint (orbax + grain iterator state)."""

from __future__ import annotations

import logging
import os
import shutil

import chex
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mdm_jax.training import checkpoint as ckpt_lib
from mdm_jax.training import optimizer as optimizer_lib
from mdm_jax.training import sharding


def make_state(step: int, *, width: int = 4):
  """A train state whose values encode `step` (so restored steps are checkable)."""
  params = {"dense": {"kernel": jnp.full((8, width), float(step)),
                      "bias": jnp.arange(width, dtype=jnp.float32) + step},
            "A_log": jnp.full((2,), -float(step))}
  tx, _ = optimizer_lib.make_optimizer(
      lr=1e-3, warmup_steps=1, total_steps=10, weight_decay=0.1,
      grad_accum_steps=2)
  return {"params": params, "opt_state": tx.init(params),
          "ema": jax.tree.map(lambda x: x * 0.5, params),
          "step": jnp.asarray(step, jnp.int32), "rng": jax.random.key(step)}


def abstract_of(state):
  return jax.eval_shape(lambda: state)


def assert_state_equal(a, b):
  unkey = lambda t: jax.tree.map(
      lambda x: jax.random.key_data(x)
      if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, t)
  chex.assert_trees_all_equal(unkey(a), unkey(b))


def make_iter():
  return iter(grain.MapDataset.range(100).shuffle(seed=0).batch(4)
              .to_iter_dataset())


def test_round_trip_state_step_rng_config(tmp_path):
  state = make_state(7)
  config = {"lr": 1e-3, "model": {"width": 4, "blocks": [1, 2]}, "name": "digits"}
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    assert ckpt.restore_latest(abstract_of(state)) is None  # fresh workdir.
    assert ckpt.save(7, state, config_dict=config)
  ckpt = ckpt_lib.Checkpointer(tmp_path)  # as after a restart.
  restored, step = ckpt.restore_latest(abstract_of(make_state(0)))
  assert step == 7
  assert_state_equal(restored, state)
  assert restored["rng"].dtype == state["rng"].dtype
  np.testing.assert_array_equal(
      jax.random.key_data(restored["rng"]), jax.random.key_data(jax.random.key(7)))
  assert ckpt.restore_config() == config
  ckpt.close()


def test_restore_into_sharded_abstract_state(tmp_path):
  state = make_state(3)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, state)
  mesh = sharding.make_mesh(data=2, fsdp=4)
  fsdp = jax.sharding.NamedSharding(mesh, P("fsdp", "tensor"))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=jax.sharding.NamedSharding(mesh, P())),
      abstract_of(state))
  abstract["params"]["dense"]["kernel"] = jax.ShapeDtypeStruct(
      (8, 4), jnp.float32, sharding=fsdp)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    restored, _ = ckpt.restore_latest(abstract)
  kernel = restored["params"]["dense"]["kernel"]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  assert {s.data.shape for s in kernel.addressable_shards} == {(2, 4)}
  assert_state_equal(restored, state)


def test_only_large_replicated_arrays_are_split_among_their_replicas(tmp_path, caplog):
  """Orbax's replica-parallel writing slices a replicated array on each replica's device, one
  compiled program per array shape and device: arrays whose slice is under
  MIN_REPLICA_SLICE_BYTES are written whole by their first replica (no programs), larger ones
  split 8 ways. Both restore exactly."""
  mesh = sharding.make_mesh(data=8, fsdp=1)
  replicated = jax.sharding.NamedSharding(mesh, P())
  big = 8 * ckpt_lib.MIN_REPLICA_SLICE_BYTES // 4          # float32: slices of the threshold
  state = jax.device_put({"small": {f"w{i}": jnp.full((24, 40 + i), float(i)) for i in range(3)},
                          "big": jnp.arange(big, dtype=jnp.float32)}, replicated)
  ckpt_lib.state_digests(state)   # its program compiled first: the save compiles slices only
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    with ckpt_lib.Checkpointer(tmp_path) as ckpt:
      ckpt.save(1, state)
  compiled = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("Compiling jit(slice)")]
  assert len(compiled) == 8 and all(f"float32[{big}]" in m for m in compiled), compiled
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    restored, step = ckpt.restore_latest(abstract_of(state))
  assert step == 1
  chex.assert_trees_all_equal(restored, state)


def test_grain_iterator_resumes_exactly(tmp_path):
  everything = [np.asarray(b) for b in make_iter()]  # independent full pass.
  it = make_iter()
  for _ in range(3):
    next(it)
  state = make_state(3)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, state, data_iter=it)
    expected = [np.asarray(next(it)) for _ in range(5)]  # original advances on.
  for want, got in zip(everything[3:8], expected):
    np.testing.assert_array_equal(want, got)
  it2 = make_iter()
  next(it2)  # a fresh iterator, somewhere else.
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    _, step = ckpt.restore_latest(abstract_of(state), data_iter=it2)
  assert step == 3
  for want in expected:
    np.testing.assert_array_equal(np.asarray(next(it2)), want)


def _truncate_state_data(step_dir):
  data_files = [os.path.join(root, f)
                for root, _, files in os.walk(step_dir / "state" / "d")
                for f in files]
  assert data_files
  for f in data_files:
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)


def _garble_metadata(step_dir):
  (step_dir / "state" / "_METADATA").write_bytes(b"\x00not json")


def _delete_iterator_item(step_dir):
  shutil.rmtree(step_dir / "data_iter")


@pytest.mark.parametrize("corrupt", [
    _truncate_state_data, _garble_metadata, _delete_iterator_item])
def test_corrupt_latest_falls_back_to_previous(tmp_path, caplog, corrupt):
  it = make_iter()
  with ckpt_lib.Checkpointer(tmp_path, max_to_keep=3) as ckpt:
    for step in (1, 2, 3):
      next(it)
      ckpt.save(step, make_state(step), data_iter=it)
  after_step_2 = [np.asarray(b) for b in make_iter()][2:4]
  corrupt(tmp_path / "checkpoints" / "3")
  it2 = make_iter()
  ckpt = ckpt_lib.Checkpointer(tmp_path, max_to_keep=3)
  with caplog.at_level(logging.WARNING):
    restored, step = ckpt.restore_latest(abstract_of(make_state(0)), data_iter=it2)
  assert step == 2
  assert_state_equal(restored, make_state(2))
  for want in after_step_2:
    np.testing.assert_array_equal(np.asarray(next(it2)), want)
  assert "Refusing checkpoint at step 3" in caplog.text
  # The refused step is set aside, so step 3 can be written again.
  assert ckpt.all_steps() == [1, 2]
  assert (tmp_path / "refused_checkpoints" / "3").exists()
  assert ckpt.save(3, make_state(30), data_iter=it2)
  ckpt.wait()
  assert ckpt.all_steps() == [1, 2, 3]
  ckpt.close()


@pytest.mark.parametrize("change", ["extra_leaf", "shape"])
def test_structure_mismatch_is_refused_clearly(tmp_path, caplog, change):
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(1))
    ckpt.save(2, make_state(2))
  if change == "extra_leaf":
    expected = make_state(0)
    expected["params"]["new_layer"] = jnp.zeros((3,))
  else:
    expected = make_state(0, width=5)
  ckpt = ckpt_lib.Checkpointer(tmp_path)
  with caplog.at_level(logging.WARNING):
    with pytest.raises(ckpt_lib.NoUsableCheckpointError,
                       match=r"(?s)step 2: .*step 1: .*new --workdir"):
      ckpt.restore_latest(abstract_of(expected))
  assert "Refusing checkpoint at step 2" in caplog.text
  assert ckpt.all_steps() == [1, 2]  # nothing moved when no good one exists.
  ckpt.close()


def test_partial_write_is_never_picked_up(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, make_state(1))
  # What a crash during an async write leaves: an unfinalised tmp directory.
  partial = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1700000000"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "_METADATA").write_text("{")
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    assert ckpt.all_steps() == [1]
    _, step = ckpt.restore_latest(abstract_of(make_state(0)))
  assert step == 1


def test_max_to_keep(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    for step in range(1, 5):
      ckpt.save(step, make_state(step))
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]


def test_check_finite_names_every_bad_term():
  ckpt_lib.check_finite(5, {"loss": jnp.float32(1.0), "n": 3})
  with pytest.raises(FloatingPointError) as info:
    ckpt_lib.check_finite(12, {
        "loss": jnp.float32(jnp.nan), "kl": 0.5,
        "rec": np.array([1.0, np.inf, 2.0]), "count": np.int32(4)})
  msg = str(info.value)
  assert "step 12" in msg and "loss=nan" in msg
  assert "rec (1 of 3 entries non-finite)" in msg
  assert "kl" not in msg and "count" not in msg


def test_bad_config_is_a_clear_error(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(ValueError, match="not JSON-serialisable"):
      ckpt.save(1, make_state(1), config_dict={"f": object()})


def _save_steps(workdir, steps, **kw):
  with ckpt_lib.Checkpointer(workdir, max_to_keep=None) as ckpt:
    for step in steps:
      ckpt.save(step, make_state(step), config_dict={"step": step}, **kw)


def test_bytes_changed_after_the_save_are_caught_by_the_digests(tmp_path, caplog):
  # Step 2's arrays replaced by step 1's: every file decodes, the shapes match, and only the
  # digests written with step 2 can tell (as with bytes overwritten inside an array file).
  _save_steps(tmp_path, (1, 2))
  root = tmp_path / "checkpoints"
  shutil.rmtree(root / "2" / "state")
  shutil.copytree(root / "1" / "state", root / "2" / "state")
  ckpt = ckpt_lib.Checkpointer(tmp_path)
  with caplog.at_level(logging.WARNING):
    restored, step = ckpt.restore_latest(abstract_of(make_state(0)))
  assert step == 1
  assert_state_equal(restored, make_state(1))
  assert "do not match the digests written with step 2" in caplog.text
  ckpt.close()


def test_random_bytes_inside_an_array_file_fall_back_to_the_previous_step(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    for step in (1, 2):
      state = make_state(step, width=256)
      ckpt.save(step, state)
  files = [os.path.join(root, f) for root, _, fs in os.walk(tmp_path / "checkpoints" / "2" /
                                                            "state" / "d") for f in fs]
  largest = max(files, key=os.path.getsize)
  size = os.path.getsize(largest)
  with open(largest, "r+b") as fh:  # 64 random bytes in the middle, the size unchanged
    fh.seek(size // 2)
    fh.write(np.random.default_rng(0).bytes(64))
  assert os.path.getsize(largest) == size
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    restored, step = ckpt.restore_latest(abstract_of(make_state(0, width=256)))
  assert step == 1
  assert_state_equal(restored, make_state(1, width=256))


def test_digest_sees_a_swap_and_every_dtype():
  x = jnp.arange(6, dtype=jnp.float32)
  swapped = x[jnp.array([1, 0, 2, 3, 4, 5])]
  state = {"f": x, "b": jnp.ones((2, 3), jnp.bfloat16), "i": jnp.arange(4),
           "m": jnp.array([True, False]), "k": jax.random.key(0)}
  table, bad = ckpt_lib.state_digests(state)
  assert not bad and len(table) == 5
  # The plain sum is blind to a swap; the position-weighted one is not.
  other, _ = ckpt_lib.state_digests(dict(state, f=swapped))
  assert other["['f']"][0] == table["['f']"][0] and other["['f']"][1] != table["['f']"][1]
  # Hand formula for the plain word sum of a float32 leaf.
  words = np.asarray(x).view(np.uint32).astype(np.uint64).sum() % 2**32
  assert table["['f']"][0] == int(words)
  # ... and of the position-weighted one, on a 2-D leaf (row-major positions).
  m = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
  u = m.view(np.uint32).astype(np.uint64).ravel()
  weight = (np.arange(u.size, dtype=np.uint64) * 0x9E3779B1 + 1) % 2**32
  got, _ = ckpt_lib.state_digests({"m": jnp.asarray(m)})
  assert got["['m']"] == [int(u.sum() % 2**32), int((u * weight % 2**32).sum() % 2**32)]
  # One non-finite element anywhere in a leaf names that leaf alone.
  for bad_value in (np.nan, np.inf):
    poisoned = m.copy()
    poisoned[2, 3] = bad_value
    _, bad = ckpt_lib.state_digests({"m": jnp.asarray(poisoned), "ok": jnp.asarray(m)})
    assert bad == ["['m']"]


@pytest.mark.parametrize("where", ["params", "opt_state", "ema"])
def test_a_non_finite_state_is_never_saved(tmp_path, where):
  # What --config.optim.lr=1e38 gives: the loss before the update is finite, the state after
  # it is not.
  _save_steps(tmp_path, (1,))
  state = make_state(2)
  leaves, treedef = jax.tree.flatten(state[where])
  leaves[0] = leaves[0].at[0].set(jnp.inf) if leaves[0].ndim else jnp.inf * leaves[0]
  state[where] = jax.tree.unflatten(treedef, leaves)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(FloatingPointError, match=rf"step 2: \['{where}'\]"):
      ckpt.save(2, state)
    assert ckpt.all_steps() == [1]


def test_a_reader_changes_nothing_in_the_workdir(tmp_path):
  _save_steps(tmp_path, (1, 2))
  # A running trainer's save in progress, and a refused (garbled) newest checkpoint.
  in_progress = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1700000000"
  (in_progress / "state").mkdir(parents=True)
  _garble_metadata(tmp_path / "checkpoints" / "2")
  before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
  with ckpt_lib.Checkpointer(tmp_path, read_only=True) as reader:
    _, step = reader.restore_latest(abstract_of(make_state(0)))
    assert step == 1
    with pytest.raises(PermissionError, match="read-only"):
      reader.save(4, make_state(4))
  assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_an_unreadable_config_falls_back_to_the_previous_one(tmp_path, caplog):
  _save_steps(tmp_path, (1, 2))
  for f in (tmp_path / "checkpoints" / "2" / "config").iterdir():
    f.write_bytes(b"\x00garbage{")
  with ckpt_lib.Checkpointer(tmp_path, read_only=True) as reader:
    with caplog.at_level(logging.WARNING):
      assert reader.restore_config() == {"step": 1}
      _, step = reader.restore_latest(abstract_of(make_state(0)))
  assert step == 1
  assert "Refusing the config of checkpoint 2" in caplog.text


def test_restoring_a_subset_reads_those_keys_and_verifies_their_digests(tmp_path, caplog):
  """Sampling restores ema (+ step) alone; a changed array among them is still caught."""
  _save_steps(tmp_path, (1, 2))
  ckpt = ckpt_lib.Checkpointer(tmp_path, read_only=True)
  restored, step = ckpt.restore_latest(abstract_of(make_state(0)), only=("ema", "step"))
  assert step == 2 and sorted(restored) == ["ema", "step"]
  want = make_state(2)
  assert_state_equal(restored, {"ema": want["ema"], "step": want["step"]})
  with pytest.raises(KeyError, match="not in the state's keys"):
    ckpt.restore(2, abstract_of(make_state(0)), only=("ema", "emma"))
  ckpt.close()
  root = tmp_path / "checkpoints"   # step 2's arrays replaced by step 1's (digests of step 2)
  shutil.rmtree(root / "2" / "state")
  shutil.copytree(root / "1" / "state", root / "2" / "state")
  with caplog.at_level(logging.WARNING):
    with ckpt_lib.Checkpointer(tmp_path, read_only=True) as ckpt:
      restored, step = ckpt.restore_latest(abstract_of(make_state(0)), only=("ema",))
  assert step == 1 and "do not match the digests written with step 2" in caplog.text
  assert_state_equal(restored, {"ema": make_state(1)["ema"]})


def test_assets_are_saved_with_every_checkpoint(tmp_path):
  """A Checkpointer given an assets record writes it with each save (restore_assets reads it
  back per step); one given none writes none, and restore_assets says so with None."""
  assets = {"tokenizer": {"file": "tokenizer.model", "sha256": "ab" * 32, "vocab_size": 40}}
  with ckpt_lib.Checkpointer(tmp_path / "a", assets=assets) as ckpt:
    ckpt.save(1, make_state(1))
    ckpt.save(2, make_state(2))
  with ckpt_lib.Checkpointer(tmp_path / "b") as ckpt:
    ckpt.save(1, make_state(1))
  reader = ckpt_lib.Checkpointer(tmp_path / "a", read_only=True)
  assert [reader.restore_assets(s) for s in reader.all_steps()] == [assets, assets]
  _, step = reader.restore_latest(abstract_of(make_state(0)))   # the item does not disturb it
  assert step == 2
  assert ckpt_lib.Checkpointer(tmp_path / "b", read_only=True).restore_assets(1) is None
  with pytest.raises(ValueError, match="not JSON-serialisable"):
    ckpt_lib.Checkpointer(tmp_path / "c", assets={"bad": object()})
