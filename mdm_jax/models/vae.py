"""The unified VAE: one encoder and one decoder shared by image patches and text tokens.

Images are cut into p x p patches (``patchify``); a clip's frames each the same way, or into
tubelets of p x p pixels over a few frames (``patchify_clip``); text ids (SentencePiece BPE,
plus the absorbing diffusion's [MASK] id == vocab_size) are embedded. Both are projected to the
same width, tagged with a learned modality embedding, and go through ONE shared per-token encoder
that outputs a diagonal Gaussian ``(mu, log_sigma)`` of width ``latent_dim`` per token. A
reparameterised sample ``z = mu + sigma * eps`` goes through ONE shared decoder, whose two heads
give image patches (trained with L2) and vocabulary logits (trained with cross-entropy). The KL
to N(0, I) regularises the latent space.

The encoder and decoder are per-token residual MLPs: the latent of a patch or a token depends
only on that patch or token, so the denoiser sees a local, aligned latent grid (as a
latent-diffusion autoencoder with a 1x1 receptive field per patch).

Diffusion runs on ``scale * z`` where ``scale`` makes the latents unit-variance. It is measured
on data, as in latent diffusion, but since the VAE trains jointly with the denoiser it is kept as
a running (EMA) estimate of the latent std in the ``latent_stats`` collection and read (never
trained) by the diffusion loss and the samplers.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange

Dtype = Any
IMAGE, TEXT = 0, 1  # modality ids


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """(b, H, W, c) -> (b, (H/p)*(W/p), p*p*c), patches in row-major grid order."""
  if images.ndim != 4:
    raise ValueError(f"patchify: images must be (batch, height, width, channels), got {images.shape}")
  _, hgt, wid, _ = images.shape
  if hgt % patch or wid % patch:
    raise ValueError(f"patchify: image size {hgt}x{wid} is not divisible by patch size {patch};"
                     " resize the images or change model.patch_size")
  return rearrange(images, "b (gh p) (gw q) c -> b (gh gw) (p q c)", p=patch, q=patch)


def unpatchify(patches: jax.Array, grid: tuple[int, int], patch: int, channels: int) -> jax.Array:
  """(b, gh*gw, p*p*c) -> (b, gh*p, gw*p, c); inverse of ``patchify``."""
  return rearrange(patches, "b (gh gw) (p q c) -> b (gh p) (gw q) c", gh=grid[0], gw=grid[1],
                   p=patch, q=patch, c=channels)


def patchify_clip(clips: jax.Array, patch: int, tubelet: int = 1) -> jax.Array:
  """(b, T, H, W, c) -> (b, (T/k)*(H/p)*(W/p), k*p*p*c) with k = ``tubelet``: tokens time-major
  (tubelet after tubelet, each row-major, the ``scan_order`` clip layout), a token's values
  frame after frame, each frame's as ``patchify``'s. ``tubelet=1`` patchifies every frame as an
  image; a clip of one frame gives exactly ``patchify`` of that frame."""
  if clips.ndim != 5:
    raise ValueError("patchify_clip: clips must be (batch, frames, height, width, channels), "
                     f"got {clips.shape}; an image batch is clips[:, None]")
  _, frames, hgt, wid, _ = clips.shape
  if tubelet < 1 or frames % tubelet:
    raise ValueError(f"patchify_clip: {frames} frames do not split into tubelets of {tubelet}; "
                     "use a tubelet that divides the frame count (1 always does)")
  if hgt % patch or wid % patch:
    raise ValueError(f"patchify_clip: frame size {hgt}x{wid} is not divisible by patch size "
                     f"{patch}; resize the frames or change model.patch_size")
  return rearrange(clips, "b (nt k) (gh p) (gw q) c -> b (nt gh gw) (k p q c)", k=tubelet,
                   p=patch, q=patch)


def unpatchify_clip(patches: jax.Array, frames: int, grid: tuple[int, int], patch: int,
                    channels: int, tubelet: int = 1) -> jax.Array:
  """(b, (T/k)*gh*gw, k*p*p*c) -> (b, T, gh*p, gw*p, c); inverse of ``patchify_clip``."""
  if tubelet < 1 or frames % tubelet:
    raise ValueError(f"unpatchify_clip: {frames} frames do not split into tubelets of "
                     f"{tubelet}; use a tubelet that divides the frame count (1 always does)")
  return rearrange(patches, "b (nt gh gw) (k p q c) -> b (nt k) (gh p) (gw q) c",
                   nt=frames // tubelet, gh=grid[0], gw=grid[1], k=tubelet, p=patch, q=patch,
                   c=channels)


def kl_to_standard_normal(mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """KL(N(mu, sigma^2) || N(0, 1)) summed over the last axis: (..., d) -> (...)."""
  mu = mu.astype(jnp.float32)
  log_sigma = log_sigma.astype(jnp.float32)
  return 0.5 * jnp.sum(mu**2 + jnp.exp(2 * log_sigma) - 1.0 - 2 * log_sigma, axis=-1)


class ResidualMLP(nn.Module):
  """Pre-norm residual MLP stack applied per token: (..., width) -> (..., width)."""
  width: int
  depth: int
  mlp_ratio: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    lp = nn.with_logical_partitioning
    for i in range(self.depth):
      y = nn.RMSNorm(dtype=self.dtype, name=f"norm_{i}",
                     scale_init=lp(nn.initializers.ones, ("embed",)))(h)
      y = nn.Dense(self.width * self.mlp_ratio, dtype=self.dtype, name=f"up_{i}",
                   kernel_init=lp(nn.initializers.lecun_normal(), ("embed", "mlp")),
                   bias_init=lp(nn.initializers.zeros, ("mlp",)))(y)
      y = nn.Dense(self.width, dtype=self.dtype, name=f"down_{i}",
                   kernel_init=lp(nn.initializers.lecun_normal(), ("mlp", "embed")),
                   bias_init=lp(nn.initializers.zeros, ("embed",)))(nn.gelu(y))
      h = h + y
    return nn.RMSNorm(dtype=self.dtype, name="norm_out",
                      scale_init=lp(nn.initializers.ones, ("embed",)))(h)


def _dense(features, names, name, dtype, zero=False):
  lp = nn.with_logical_partitioning
  init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
  return nn.Dense(features, dtype=dtype, name=name, kernel_init=lp(init, names),
                  bias_init=lp(nn.initializers.zeros, (names[1],)))


class UnifiedVAE(nn.Module):
  """Shared encoder/decoder for image patches and text tokens (see module docstring).

  Attributes:
    patch_dim: p * p * channels of an image patch.
    vocab_size: V; the embedding table has V + 1 rows (the last is [MASK]).
    width, depth: the shared per-token MLPs.
    latent_dim: latent channels per token.
    latent_ema: momentum of the running latent-std estimate.
  """
  patch_dim: int
  vocab_size: int
  width: int = 128
  depth: int = 2
  latent_dim: int = 8
  latent_ema: float = 0.99
  dtype: Dtype = jnp.float32

  def setup(self):
    lp = nn.with_logical_partitioning
    self.patch_in = _dense(self.width, ("patch", "embed"), "patch_in", self.dtype)
    self.token_embed = nn.Embed(self.vocab_size + 1, self.width, dtype=self.dtype,
                                embedding_init=lp(nn.initializers.normal(1.0), ("vocab", "embed")),
                                name="token_embed")
    self.modality_embed = self.param("modality_embed",
                                     lp(nn.initializers.normal(0.02), (None, "embed")),
                                     (2, self.width), jnp.float32)
    self.encoder = ResidualMLP(self.width, self.depth, dtype=self.dtype, name="encoder")
    self.to_gaussian = _dense(2 * self.latent_dim, ("embed", "latent"), "to_gaussian",
                              self.dtype)
    self.latent_in = _dense(self.width, ("latent", "embed"), "latent_in", self.dtype)
    self.decoder = ResidualMLP(self.width, self.depth, dtype=self.dtype, name="decoder")
    self.patch_out = _dense(self.patch_dim, ("embed", "patch"), "patch_out", self.dtype)
    self.vocab_out = _dense(self.vocab_size, ("embed", "vocab"), "vocab_out", self.dtype)
    # Running std of the latents per modality: diffusion sees z / std (unit variance).
    self.latent_std = self.variable("latent_stats", "std", lambda: jnp.ones((2,), jnp.float32))

  def _encode(self, h, modality: int):
    h = h + self.modality_embed[modality].astype(self.dtype)
    mu, log_sigma = jnp.split(self.to_gaussian(self.encoder(h)).astype(jnp.float32), 2, axis=-1)
    return mu, jnp.clip(log_sigma, -10.0, 5.0)

  def encode_image(self, patches):
    """patches (b, N, patch_dim) -> mu, log_sigma (b, N, latent_dim) float32."""
    if patches.shape[-1] != self.patch_dim:
      raise ValueError(f"encode_image: patch dim {patches.shape[-1]} != configured "
                       f"{self.patch_dim} (patch_size^2 * channels); check image channels")
    return self._encode(self.patch_in(patches.astype(self.dtype)), IMAGE)

  def encode_text(self, ids):
    """ids (b, T) int in [0, V] (V = [MASK]) -> mu, log_sigma (b, T, latent_dim) float32."""
    return self._encode(self.token_embed(ids), TEXT)

  def _decode(self, z, modality: int):
    h = self.latent_in(z.astype(self.dtype)) + self.modality_embed[modality].astype(self.dtype)
    return self.decoder(h)

  def decode_image(self, z):
    """z (b, N, latent_dim) -> patches (b, N, patch_dim) float32."""
    return self.patch_out(self._decode(z, IMAGE)).astype(jnp.float32)

  def decode_text(self, z):
    """z (b, T, latent_dim) -> logits over the vocabulary (b, T, V) float32 ([MASK] excluded)."""
    return self.vocab_out(self._decode(z, TEXT)).astype(jnp.float32)

  def latent_scale(self) -> jax.Array:
    """(2,) factors that make image (0) and text (1) latents unit-variance (no gradient)."""
    return jax.lax.stop_gradient(1.0 / jnp.maximum(self.latent_std.value, 1e-3))

  def update_latent_std(self, z_image=None, z_text=None, text_mask=None):
    """EMA update of the measured latent std (only when ``latent_stats`` is mutable)."""
    if not self.is_mutable_collection("latent_stats"):
      return
    std = self.latent_std.value
    m = self.latent_ema
    if z_image is not None:
      std = std.at[IMAGE].set(m * std[IMAGE] + (1 - m) * jnp.std(jax.lax.stop_gradient(z_image)))
    if z_text is not None:
      z = jax.lax.stop_gradient(z_text)
      w = jnp.ones(z.shape[:-1]) if text_mask is None else text_mask.astype(jnp.float32)
      w = jnp.broadcast_to(w[..., None], z.shape)
      mean = jnp.sum(w * z) / jnp.maximum(jnp.sum(w), 1.0)
      var = jnp.sum(w * (z - mean) ** 2) / jnp.maximum(jnp.sum(w), 1.0)
      std = std.at[TEXT].set(m * std[TEXT] + (1 - m) * jnp.sqrt(var))
    self.latent_std.value = std

  def __call__(self, patches, ids):
    """Touches every parameter (for init): returns reconstructions of both modalities."""
    mu_i, _ = self.encode_image(patches)
    mu_t, _ = self.encode_text(ids)
    return self.decode_image(mu_i), self.decode_text(mu_t), self.latent_scale()
