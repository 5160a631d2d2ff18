"""The task table (``mdm_jax.tasks``) as the loss and generation read it.

The expectations are the paper's task table written out by hand here, not read from the module:
a wrong role in ``tasks.py`` (or a consumer that ignores it) moves a diffusion loss onto a
modality it should not train, or lets generation run without an input it needs.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax import tasks
from mdm_jax.generate import generate
from mdm_jax.losses import LossConfig, mdm_loss
from mdm_jax.models.mdm import MDM
from tiny_mdm import (FAST_COMPILE, NUM_CLASSES, TEXT_LEN, VOCAB, key, randomize_zero_kernels,
                      tiny_config)

BATCH, QUESTION_LEN = 8, 3
# Which diffusion loss each task trains (the paper's table).
LOSS_ON = {"class2img": {"image"}, "t2i": {"image"}, "caption": {"text"}, "vqa": {"text"},
           "joint": {"image", "text"}, "text": {"text"}}
GEN_NEEDS = {"class2img": set(), "t2i": {"text"}, "caption": {"images"},
             "vqa": {"images", "text", "prompt_len"}, "joint": set(), "text": set(),
             "inpaint": {"images", "image_mask"}}


def test_names_ids_and_data_gating():
  assert tasks.TASKS == tuple(LOSS_ON) and tasks.GEN_TASKS == tuple(GEN_NEEDS)
  assert [tasks.TASK_IDS[t] for t in tasks.TASKS] == list(range(6))
  assert tasks.get("class") is tasks.get("class2img")
  assert tasks.get("inpaint").network_task == "class2img"
  with pytest.raises(ValueError, match="img2img.*class2img"):
    tasks.get("img2img")
  assert tasks.servable(["image", "label"]) == ("class2img",)
  assert tasks.servable(["caption"]) == ("class2img", "t2i", "caption", "joint", "text")
  assert tasks.servable(["caption", "vqa"]) == tasks.TASKS
  assert tasks.trained_tasks((1, 0, 1, 1, 0, 1), ["caption"]) == ("class2img", "caption", "text")


@pytest.fixture(scope="module")
def output_grads():
  """task -> gradients of the total loss (all weight on that task) with respect to an offset
  added to the network's eps output and to its text output at each position."""
  model = MDM(tiny_config())
  rs = np.random.RandomState(0)
  batch = dict(image=jnp.asarray(rs.uniform(-1, 1, (BATCH, 8, 8, 1)), jnp.float32),
               label=jnp.arange(BATCH, dtype=jnp.int32) % NUM_CLASSES,
               caption=jnp.asarray(rs.randint(0, VOCAB, (BATCH, TEXT_LEN)), jnp.int32),
               vqa=jnp.asarray(rs.randint(0, VOCAB, (BATCH, TEXT_LEN)), jnp.int32),
               vqa_prompt_len=jnp.full((BATCH,), QUESTION_LEN, jnp.int32))
  variables = nn.meta.unbox(jax.jit(model.init, compiler_options=FAST_COMPILE)(
      key(0), batch["image"], batch["caption"]))
  variables = {"params": randomize_zero_kernels(variables["params"]),
               "latent_stats": {"vae": {"std": jnp.asarray([1.5, 0.7])}}}

  @jax.jit(compiler_options=FAST_COMPILE)
  def grads(task_weights):
    lc = LossConfig(task_weights=tuple(task_weights[i] for i in range(6)), cond_drop=0.0)

    def total(d_eps, d_txt):
      def offset(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, MDM) and context.method_name == "denoise":
          return out[0] + d_eps, out[1] + d_txt[None, :, None]
        return out

      with nn.intercept_methods(offset):
        (loss, _), _ = model.apply(variables, batch, key(3), lc, method=mdm_loss,
                                   mutable=["latent_stats"])
      return loss

    return jax.grad(total, argnums=(0, 1))(jnp.float32(0.0), jnp.zeros((TEXT_LEN,)))

  return {t: jax.tree.map(np.asarray, grads(jnp.asarray([float(t == u) for u in LOSS_ON])))
          for t in LOSS_ON}


@pytest.mark.parametrize("task", list(LOSS_ON))
def test_diffusion_loss_is_exactly_on_the_noised_modalities(output_grads, task):
  g_eps, g_txt = output_grads[task]
  assert (g_eps != 0) == ("image" in LOSS_ON[task]), g_eps
  if task == "vqa":  # the question is a clean prompt: loss on the answer positions only
    np.testing.assert_array_equal(g_txt[:QUESTION_LEN], 0.0)
    assert np.any(g_txt[QUESTION_LEN:] != 0)
  else:
    assert np.any(g_txt != 0) == ("text" in LOSS_ON[task]), g_txt


@pytest.mark.parametrize("task", list(GEN_NEEDS))
def test_generate_refuses_each_missing_input(task):
  """Refused before anything is traced, naming the missing input; text_mask only where the
  text is generated."""
  model = MDM(tiny_config())
  full = dict(text=jnp.zeros((2, TEXT_LEN), jnp.int32), images=jnp.zeros((2, 8, 8, 1)),
              prompt_len=jnp.ones((2,), jnp.int32), image_mask=jnp.ones((2, 8, 8, 1), bool))
  for missing in GEN_NEEDS[task]:
    given = {k: full[k] for k in GEN_NEEDS[task] - {missing}}
    with pytest.raises(ValueError, match=f"needs.*'{missing}'"):
      generate(model, {}, task, key(0), num=2, procs=None, **given)
  if task not in ("text", "caption", "joint"):
    with pytest.raises(ValueError, match="text_mask"):
      generate(model, {}, task, key(0), num=2, procs=None,
               text_mask=jnp.ones((2, TEXT_LEN), bool), **{k: full[k] for k in GEN_NEEDS[task]})
