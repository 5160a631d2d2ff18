"""Generation on clips through the image tasks of the task table: class-to-video gives clips,
captioning reads clips, and video prediction is inpainting with a mask over frames (the `known`
role): the given frames come back as the VAE's reconstruction of them (the model's own
encode/decode, computed apart), the others are generated."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax import generate as gen
from mdm_jax.diffusion.processes import Processes
from mdm_jax.losses import LossConfig
from mdm_jax.models.mdm import MDM, MDMConfig

CFG = MDMConfig(image_size=16, patch_size=4, frames=4, max_text_len=8, vocab_size=32,
                vae_width=32, vae_depth=1, latent_dim=4, d_model=32, n_layers=2, d_state=8,
                headdim=16, chunk_size=16)
NUM, CLIP = 2, (4, 16, 16, 1)


@pytest.fixture(scope="module")
def model():
  m = MDM(CFG)
  variables = m.init(jax.random.PRNGKey(0), jnp.zeros((1, *CLIP)),
                     jnp.zeros((1, CFG.max_text_len), jnp.int32))
  procs = Processes.build(CFG, LossConfig())
  run = lambda task, **kw: jax.jit(functools.partial(
      gen.generate, m, task=task, num=NUM, procs=procs,
      sample_cfg=gen.SampleConfig(steps=2)))(variables, rng=jax.random.PRNGKey(1), **kw)
  return m, variables, run


def _clips():
  return jax.random.uniform(jax.random.PRNGKey(2), (NUM, *CLIP), minval=-1.0, maxval=1.0)


def test_class_to_video_gives_clips(model):
  _, _, run = model
  clips, _ = run("class2img", labels=jnp.arange(NUM))
  assert clips.shape == (NUM, *CLIP)
  assert np.all(np.isfinite(clips)) and np.abs(clips).max() <= 1.0
  assert float(jnp.std(clips[:, 0] - clips[:, -1])) > 0   # frames are not one image repeated


def test_captioning_reads_clips(model):
  _, _, run = model
  x = _clips()
  given, tokens = run("caption", images=x)
  np.testing.assert_array_equal(given, x)
  assert tokens.shape == (NUM, CFG.max_text_len)
  assert tokens.min() >= 0 and tokens.max() <= CFG.vocab_size


def test_video_prediction_keeps_the_given_frames(model):
  m, variables, run = model
  x, k = _clips(), 2
  mask = jnp.zeros((NUM, *CLIP), bool).at[:, :k].set(True)   # the first k frames are given
  out, _ = run("inpaint", images=x, image_mask=mask, labels=jnp.arange(NUM))
  recon = m.apply(variables, x, method=lambda mod, c: mod.decode_clip(mod.encode_clip(c)[0]))
  recon = np.clip(np.asarray(recon), -1.0, 1.0)
  np.testing.assert_allclose(out[:, :k], recon[:, :k], atol=1e-5)
  assert np.abs(np.asarray(out[:, k:]) - recon[:, k:]).max() > 1e-2   # generated, not given
