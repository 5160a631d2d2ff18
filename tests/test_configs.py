"""Named configs: each loads and builds the model config; the 7B count; ablations; --config names."""

from __future__ import annotations

import dataclasses
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
                      if f.endswith(".py") and f not in ("__init__.py", "base.py"))


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
  assert c.data.image_size % mc.patch_size == 0
  assert c.checkpoint_every > 0 and c.log_every > 0
  assert c.optim.warmup_steps < c.total_steps
  configs.check_run_values(c)
  lc = trainer_lib.loss_config(c)
  assert len(lc.task_weights) == 6 and sum(lc.task_weights) > 0
  # Every sampler setting of the config reaches the sampler; ``num`` is the run's (how many
  # samples it writes), not a sampler setting.
  sc = trainer_lib.sample_config(c)
  assert "num" not in dataclasses.asdict(sc)
  assert dataclasses.asdict(sc) == {k: v for k, v in c.sample.items() if k != "num"}
  mesh = sharding.make_mesh(**dict(c.mesh))        # on the 8 fake test devices
  assert mesh.devices.size == jax.device_count()
  assert c.batch_size % mesh.devices.size == 0


def test_data_values_have_one_home_the_data_section():
  """The model's input shapes and vocabulary are the data section's: a changed data value
  reaches the model config, and a second copy in the model section is refused by name."""
  c = configs.load("digits")
  for key in trainer_lib.DATA_FIELDS:
    assert key not in c.model
  c.data.update(dict(image_size=16, channels=3, max_text_len=20, vocab_size=99))
  mc = trainer_lib.model_config(c)
  assert (mc.image_size, mc.channels, mc.max_text_len, mc.vocab_size) == (16, 3, 20, 99)
  # The tokenizer's vocabulary and the dataset's classes are given at build time.
  over = trainer_lib.model_config(c, vocab_size=123, num_classes=7)
  assert (over.vocab_size, over.num_classes, over.image_size) == (123, 7, 16)
  c.model.image_size = 32
  with pytest.raises(ValueError, match=r"model\.image_size .*Set data\.image_size instead"):
    trainer_lib.model_config(c)
  with pytest.raises(ValueError, match=r"no 'max_text_len' in model \(the model reads it from "
                     r"the data section: use --config\.data\.max_text_len\)"):
    configs.check_override_fields(configs.load("digits"), ["--config.model.max_text_len=9"])


def test_every_model_loss_and_sampler_field_is_in_the_base_config():
  """The dataclasses' defaults are the base config's: every field can be set with
  --config.model/loss/sample.FIELD, and a run that sets nothing gets the dataclass default."""
  from experiments.configs import base
  from mdm_jax.generate import SampleConfig
  from mdm_jax.losses import LossConfig
  c = base.get_config()
  model = {f.name: f.default for f in dataclasses.fields(MDMConfig)}
  assert {**c.model, **{k: c.data[k] for k in trainer_lib.DATA_FIELDS}} == model
  assert dict(c.loss) == {f.name: f.default for f in dataclasses.fields(LossConfig)}
  assert {k: v for k, v in c.sample.items() if k != "num"} == {
      f.name: f.default for f in dataclasses.fields(SampleConfig)}
  with pytest.raises(ValueError, match="total_steps=None.*batch_size=None"):
    configs.check_run_values(c)


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
  with pytest.raises(ValueError, match="'base' holds the defaults every run derives from"):
    configs.resolve("base")


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


def test_saved_config_without_mask_answer_reads_back_with_the_answer_drawn():
  """A run saved before ``loss.mask_answer`` trained with the VQA answer drawn like every other
  position: its config reads back with the field off, so resuming it under today's default is a
  drift the resume names (not a silent change of objective), and with the field off it is none."""
  from experiments.workdir import upgrade_saved_config
  from mdm_jax.training import config_drift
  new = configs.load("digits")
  assert new.loss.mask_answer
  old = new.to_dict()
  del old["loss"]["mask_answer"]
  upgraded = upgrade_saved_config(ml_collections.ConfigDict(old))
  assert upgraded.loss.mask_answer is False
  assert config_drift.compare(upgraded, new)   # a resumed old run would change its objective
  new.loss.mask_answer = False
  assert not config_drift.compare(upgraded, new)


def test_saved_config_from_before_clips_resumes_without_a_drift():
  """A config saved before the model took clips has no frames/tubelet/time_orders: it trained on
  one-frame inputs, which is what today's defaults build, so resuming it is no config change."""
  from experiments.workdir import upgrade_saved_config
  from mdm_jax.training import config_drift
  new = configs.load("digits")
  old = new.to_dict()
  for key in ("frames", "tubelet", "time_orders"):
    del old["model"][key]
  assert config_drift.compare(old, new)   # the raw saved config differs ...
  assert not config_drift.compare(upgrade_saved_config(ml_collections.ConfigDict(old)), new)


def test_saved_config_with_the_old_duplicated_fields_reopens_as_it_trained():
  """A config.json saved before the data values had one home also holds them in ``model``
  (where the data's overrode them) and no sharding rules: it upgrades to the model config it
  trained with and the base rules."""
  from experiments.configs import base
  from experiments.workdir import upgrade_saved_config
  new = configs.load("digits")
  old = new.to_dict()
  del old["sharding"]
  # What the old digits.py wrote: the data's values, and a vocab_size the tokenizer overrode.
  old["model"].update(image_size=8, channels=1, max_text_len=12, vocab_size=512)
  upgraded = upgrade_saved_config(ml_collections.ConfigDict(old))
  assert trainer_lib.model_config(upgraded, vocab_size=200) == trainer_lib.model_config(
      new, vocab_size=200)
  assert (sharding.as_rules(upgraded.sharding.logical_axis_rules) ==
          sharding.as_rules(base.get_config().sharding.logical_axis_rules))


def test_config_file_fields_are_checked_against_the_base_config(tmp_path):
  """Every registered config sets only base fields; a file's typo is named with the field it
  meant (the same name in another section, its initials, or its spelling); a get_config that
  returns a plain dict, or a file without one, is refused naming the file."""
  for name in configs.NAMES:
    configs.check_config_fields(configs.load(name), name)
  c = configs.load("tiny")
  c.optim.learning_rate = 1e-3      # meant optim.lr (its initials)
  c.model.diretions = 1             # misspelt
  c.lr = 1e-3                       # optim.lr in the wrong section
  with pytest.raises(ValueError) as e:
    configs.check_config_fields(c, "mine.py")
  msg = str(e.value)
  assert msg.startswith("mine.py sets fields no run reads: ")
  assert "'optim.learning_rate' (did you mean 'optim.lr'" in msg
  assert "'model.diretions' (did you mean 'model.directions'" in msg
  assert "'lr' (did you mean 'optim.lr'" in msg
  assert "n_layers" not in configs.nearest_fields("optim.learning_rate",
                                                  ["optim.lr", "model.n_layers"])
  plain = tmp_path / "plain.py"
  plain.write_text("def get_config():\n  return {'total_steps': 3}\n")
  with pytest.raises(ValueError, match=r"get_config\(\) in .*plain\.py returned a dict, not an "
                     r"ml_collections\.ConfigDict"):
    configs.load(str(plain))
  plain.write_text("CONFIG = 1\n")
  with pytest.raises(ValueError, match=r"plain\.py has no get_config\(\) function"):
    configs.load(str(plain))
  arg = tmp_path / "arg.py"   # path:arg reaches get_config(arg), as config_flags passes it
  arg.write_text("from experiments.configs import tiny\n\ndef get_config(steps):\n"
                 "  c = tiny.get_config()\n  c.total_steps = int(steps)\n  return c\n")
  assert configs.load(f"{arg}:9").total_steps == 9


def test_video256_tokens_count_and_the_dry_runs_clip_inputs():
  """video256 is coco256 on 16-frame clips in tubelets of 2: 8 x 32 x 32 tokens, and the dry
  run's count (from clips) is coco256's plus the closed form of what clips add: the per-frame
  position table (T/k, d) and the VAE's first and last patch layers widened from p*p*c to
  k*p*p*c values (weights in, weights and biases out). The sampler's given clips have the
  pipeline's clip shape."""
  from experiments import compile_report
  video, image = (trainer_lib.model_config(configs.load(n)) for n in ("video256", "coco256"))
  assert video.n_image_tokens == (16 // 2) * (256 // 8) ** 2 == 8192
  k, ppc, width = 2, 8 * 8 * 3, video.vae_width
  added = (16 // k) * video.d_model + 2 * (k - 1) * ppc * width + (k - 1) * ppc
  got = compile_report.parameter_counts(video)["total"]
  assert got - compile_report.parameter_counts(image)["total"] == added
  assert got == 7_158_416_497                       # the figure video256's docstring gives
  c = configs.load("video_tiny")
  trainer = trainer_lib.Trainer(c, sharding.make_mesh(devices=jax.devices()[:1]),
                                vocab_size=c.data.vocab_size, num_classes=10)
  given = compile_report._sample_inputs(trainer, "caption", 3)  # pylint: disable=protected-access
  assert given["images"].shape == (3, c.model.frames, c.data.image_size, c.data.image_size,
                                   c.data.channels)
