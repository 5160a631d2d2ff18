"""Named configs: each loads and builds the model config; the 7B count; ablations; --config names."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from experiments import configs
from mdm_jax.models import param_count
from mdm_jax.models.mdm import MDM, MDMConfig
from mdm_jax.training import sharding
from mdm_jax.training import trainer as trainer_lib

CONFIG_FILES = sorted(f[:-3] for f in os.listdir(configs.CONFIG_DIR)
                      if f.endswith(".py") and f != "__init__.py")


def _flat(d, prefix=""):
  """A nested dict -> {"a.b.c": value}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def test_names_are_the_config_files():
  assert list(configs.NAMES) == CONFIG_FILES
  for name in ("digits", "tiny", "imagenet256", "coco256", "markov", "no_selection",
               "one_direction", "sedd_score"):
    assert name in configs.NAMES


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_builds_model_loss_sample_and_mesh(name):
  c = configs.load(name)
  mc = trainer_lib.model_config(c)
  assert isinstance(mc, MDMConfig)
  # The data fields are the single source of the model's input shapes.
  assert (mc.image_size, mc.channels, mc.max_text_len) == (
      c.data.image_size, c.data.channels, c.data.max_text_len)
  # The model's vocabulary (used by --dry_run, which trains no tokenizer) is the one the
  # tokenizer is trained for; otherwise dry-run counts and real runs disagree.
  assert c.model.vocab_size == c.data.vocab_size
  assert c.data.image_size % c.model.patch_size == 0
  assert c.checkpoint_every > 0 and c.log_every > 0
  assert c.optim.warmup_steps < c.total_steps
  lc = trainer_lib.loss_config(c)
  assert len(lc.task_weights) == 6 and sum(lc.task_weights) > 0
  trainer_lib.sample_config(c)
  mesh = sharding.make_mesh(**dict(c.mesh))        # on the 8 fake test devices
  assert mesh.devices.size == jax.device_count()
  assert c.batch_size % mesh.devices.size == 0
  over = trainer_lib.model_config(c, vocab_size=123, num_classes=7)
  assert (over.vocab_size, over.num_classes) == (123, 7)


def test_imagenet256_count_without_allocation():
  c = configs.load("imagenet256")
  mc = trainer_lib.model_config(c)
  images = jax.ShapeDtypeStruct((1, mc.image_size, mc.image_size, mc.channels), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, mc.max_text_len), jnp.int32)
  counts = param_count.count_params(MDM(mc).init, jax.random.PRNGKey(0), images, ids)
  assert abs(counts["total"] - 7e9) / 7e9 < 0.05, counts["total"]  # the paper's 7B
  # Closed form of the blocks' big matrices: Mamba-2 in_proj d x (2 d_inner + 2 g n + heads),
  # out_proj d_inner x d, SwiGLU MLP 3 x d x (mlp_ratio d), adaLN-Zero d x (6 d): shift,
  # scale and gate for the mixer and for the MLP.
  d, d_inner = mc.d_model, mc.expand * mc.d_model
  heads = d_inner // mc.headdim
  in_proj = d * (2 * d_inner + 2 * mc.ngroups * mc.d_state + heads)
  mlp = 3 * d * int(mc.mlp_ratio * d)
  per_block = in_proj + d_inner * d + mlp + d * 6 * d
  layers = counts["denoiser/layers"]
  assert mc.n_layers * per_block <= layers <= 1.01 * mc.n_layers * per_block


ABLATIONS = {
    "no_selection": {"model.selective": False},
    "one_direction": {"model.directions": 1},
    "markov": {"loss.objective": "markov", "sample.steps": 100},
    "sedd_score": {"model.text_score": "sedd"},
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_differs_from_digits_only_where_intended(name):
  base = _flat(configs.load("digits").to_dict())
  ablation = _flat(configs.load(name).to_dict())
  assert set(ablation) == set(base)
  changed = {k: v for k, v in ablation.items() if v != base[k]}
  assert changed == ABLATIONS[name]


def test_resolve_and_rewrite_argv(tmp_path):
  tiny = os.path.join(configs.CONFIG_DIR, "tiny.py")
  assert configs.resolve("tiny") == tiny
  own = tmp_path / "mine.py"
  own.write_text("def get_config():\n  return None\n")
  assert configs.resolve(f"{own}:arg") == f"{own}:arg"
  argv = ["prog", "--config=tiny", "--config.total_steps=3", "--workdir=w"]
  assert configs.rewrite_argv(argv) == ["prog", f"--config={tiny}", "--config.total_steps=3",
                                        "--workdir=w"]
  assert configs.rewrite_argv(["prog", "--config", "tiny"]) == ["prog", "--config", tiny]
  with pytest.raises(ValueError, match=r"unknown config 'nope'.*digits.*imagenet256"):
    configs.resolve("nope")
  with pytest.raises(ValueError, match="unknown config"):
    configs.resolve(str(tmp_path / "missing.py"))


def test_saved_config_without_text_score_reopens_with_the_form_it_trained_with():
  """Checkpoints from before ``model.text_score`` existed were trained with SEDD's form; a
  reopened workdir must not silently switch them to today's default."""
  from experiments.workdir import upgrade_saved_config
  old = configs.load("digits").to_dict()
  del old["model"]["text_score"]
  assert upgrade_saved_config(ml_collections.ConfigDict(old)).model.text_score == "sedd"
  new = configs.load("digits")
  assert new.model.text_score == "conditional"
  assert upgrade_saved_config(new).model.text_score == "conditional"
