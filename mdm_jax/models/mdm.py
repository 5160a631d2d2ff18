"""Multi-Modal Diffusion Mamba: the unified VAE plus one Mamba-2 denoiser for images and text.

The denoiser's sequence is ``[prefix | image latents | text latents]``:

  * prefix (never permuted, always scanned first): a token for the image time t_img, one for the
    text time t_txt, the class (``num_classes`` is the null class used for guidance), the task,
    and ``n_pad_tokens`` learnable pad tokens;
  * image latents: the VAE latents of the patches, noised by VP diffusion at t_img, on the
    (gh, gw) patch grid (optionally with DiM's learnable row-end tokens); for a clip
    (``frames`` > 1) the latents of every frame's patches, or of tubelets of ``tubelet``
    frames, time-major on a (frames / tubelet, gh, gw) grid (``Denoiser.image_positions`` has
    their position embedding). An image is a clip of one frame: a ``frames=1`` model has
    exactly the image model's parameters and outputs;
  * text latents: the VAE latents of the text ids after absorbing (SEDD) diffusion at t_txt,
    i.e. some ids replaced by [MASK] == vocab_size.

Each modality has its own time (t = 0 is clean), which gives every task from one network:
class-to-image and text-to-image (text clean or absent), captioning (image clean), VQA (image
and question clean), joint generation (both noised), text only (image absent). A modality that
is absent is fed fully noised (t = 1: Gaussian noise / all [MASK]) and gets no loss, so every
task shares one sequence layout and one compiled step.

The conditioning (each modality's time, the class and the task) enters twice: as the paper's
prefix tokens, and as DiT-style adaLN-Zero modulation of every block (per segment: image tokens
are modulated by t_img, text tokens by t_txt). Prefix tokens alone are not enough: a token far
from the prefix sees them only through the SSM's decaying state.

The caption also enters the adaLN conditioning of every block as one pooled vector
(``text_pool_cond``, on by default), as SD3 adds a pooled text embedding to its time
embedding: the sum of a learned embedding of each revealed token (``PooledTextEmbedding``).
Without it the caption reaches the image only through the layers that scan the text first,
where the class reaches every block (docs/findings.md has the measurements).

Each text token enters as its VAE latent plus a learned embedding of its noised id
(``text_id_embed``, on by default; off is the paper's latents-only input). With latents alone
the network must tell [MASK] and every word apart from a ``latent_dim``-channel point, and the
[MASK] row of the VAE's table is never trained by reconstruction; SEDD's own networks embed the
ids.

The backbone is a stack of ``n_layers`` residual blocks run with ``nn.scan`` (and ``nn.remat``) so
compile time does not grow with depth; ``scan_unroll`` layers run per iteration of that scan
(``n_layers``: the whole stack unrolled, with the same stacked parameters: XLA:CPU then skips the
loop's per-layer copies of the stashed activations, a fifth of a small model's step; the
samplers run the scan rolled, where unrolling only lengthens the compile). Layer ``l``
permutes image tokens into scan order ``l mod 4`` and text tokens into ``l mod 2`` (``scan_order``;
reversed-text layers scan the text before the image, so information flows both ways between
modalities), runs its Mamba-2 mixer, and permutes back. A clip's tokens use clip order ``l mod 6``
(the image orders over the frames in time order, and the time-major orders that scan each grid
position through the frames), or ``l mod 4`` with ``time_orders=False`` (the frame-by-frame
ablation); ``scan_order`` has the orders and why. ``backbone="transformer"`` swaps the mixer for
bidirectional softmax attention (a DiT-style baseline with the same interface; no permutation
needed).

Heads: ``eps`` (the image latents' noise) and text log-scores over vocab + [MASK]
(``diffusion.processes.absorbing_log_score``), in the form of the true absorbing score by default
(``text_score="conditional"``): ``log_softmax(raw[..., :V]) - log(e^sigma - 1)``, the clean-token
conditional over the vocabulary times the analytic factor 1 / (e^sigma - 1), so the vocabulary
entries compete through the softmax. ``text_score="sedd"`` is SEDD's free form, ``raw -
log(e^sigma - 1) - log V`` (every entry free; an untrained network starts near the ratio scale
of an uninformed model). Either way the current token's own entry is fixed to log-score 0. The
task ids and their meaning are the task table's (``mdm_jax.tasks``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.diffusion.processes import TEXT_SCORES, absorbing_log_score
from mdm_jax.models import scan_order
from mdm_jax.models.mamba2 import Mamba2
from mdm_jax.models.vae import UnifiedVAE, patchify, patchify_clip, unpatchify, unpatchify_clip
from mdm_jax.ssm import kernel
from mdm_jax.ssm.ssd import IMPLS as SSD_IMPLS
from mdm_jax.tasks import TASK_IDS, TASKS  # noqa: F401 (re-exported)

N_FIXED_PREFIX = 4  # t_img, t_txt, class, task
# The logical axes of the denoiser's (b, L, d_model) activations (the weights' are "embed" etc.).
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


@dataclasses.dataclass(frozen=True)
class MDMConfig:
  """Everything that fixes the network's shapes and behaviour (see module docstring)."""
  # Data.
  image_size: int = 8
  channels: int = 1
  patch_size: int = 2
  max_text_len: int = 16
  vocab_size: int = 256
  num_classes: int = 10
  # Unified VAE.
  vae_width: int = 128
  vae_depth: int = 2
  latent_dim: int = 8
  # Denoiser.
  backbone: str = "mamba2"          # "mamba2" | "transformer"
  d_model: int = 128
  n_layers: int = 4
  mlp_ratio: float = 0.0            # > 0 adds a SwiGLU MLP of mlp_ratio * d_model per block
  n_pad_tokens: int = 2
  text_id_embed: bool = True        # also embed the noised ids (not only their VAE latents)
  text_pool_cond: bool = True       # the pooled caption in every block's adaLN (SD3-style)
  row_end_tokens: bool = False      # DiM's learnable tokens at the end of each grid row
  directions: int = 4               # 4 (paper) or 1 ("1 scan direction" ablation)
  # Video: a clip of ``frames`` frames (1: images), patchified in tubelets of ``tubelet`` frames.
  frames: int = 1
  tubelet: int = 1
  time_orders: bool = True          # False: clips scanned with the image orders only (ablation)
  text_score: str = "conditional"   # absorbing log-score form: "conditional" or "sedd"
  # Mamba-2 mixer.
  d_state: int = 64
  d_conv: int = 4
  expand: int = 2
  headdim: int = 32
  ngroups: int = 1
  selective: bool = True            # False: "w/o selection" ablation (LTI SSM)
  chunk_size: int = 64
  ssd_impl: str = "auto"            # "auto" | "xla" | "pallas" | "scan" (mdm_jax.ssm.ssd)
  pallas_target: str = "auto"       # the kernel "pallas" runs: "auto" | "tpu" | "gpu" | "interpret"
  # Transformer baseline.
  attn_heads: int = 4
  # Numerics.
  dtype: str = "float32"            # compute dtype; parameters are always float32
  remat: bool = True
  scan_layers: bool = True
  scan_unroll: int = 1              # layers per iteration of the layer scan; n_layers: unrolled
                                    # (the train step's; the samplers run it rolled)

  def __post_init__(self):
    if self.backbone not in ("mamba2", "transformer"):
      raise ValueError(f"model.backbone must be 'mamba2' or 'transformer', got {self.backbone!r}")
    if self.directions not in (1, 4):
      raise ValueError(f"model.directions must be 4 or 1, got {self.directions}")
    if self.scan_unroll < 1:
      raise ValueError(f"model.scan_unroll must be at least 1 (n_layers unrolls the whole layer "
                       f"scan), got {self.scan_unroll}")
    if self.text_score not in TEXT_SCORES:
      raise ValueError(f"model.text_score must be one of {TEXT_SCORES}, got {self.text_score!r}")
    if self.ssd_impl not in SSD_IMPLS:
      raise ValueError(f"model.ssd_impl must be one of {SSD_IMPLS}, got {self.ssd_impl!r}")
    if self.pallas_target not in kernel.PALLAS_TARGETS:
      raise ValueError(f"model.pallas_target must be one of {kernel.PALLAS_TARGETS}, got "
                       f"{self.pallas_target!r}")
    if self.image_size % self.patch_size:
      raise ValueError(f"model.image_size {self.image_size} must be a multiple of "
                       f"model.patch_size {self.patch_size}")
    if self.frames < 1 or self.tubelet < 1:
      raise ValueError(f"model.frames ({self.frames}) and model.tubelet ({self.tubelet}) must "
                       "be at least 1; frames=1, tubelet=1 is an image model")
    if self.frames % self.tubelet:
      raise ValueError(f"model.frames {self.frames} must be a multiple of model.tubelet "
                       f"{self.tubelet}: set tubelet to a divisor of frames (1 always is)")

  @property
  def grid(self) -> tuple[int, int]:
    g = self.image_size // self.patch_size
    return (g, g)

  @property
  def token_frames(self) -> int:
    """Frames of the token grid: ``frames / tubelet`` (1 for an image)."""
    return self.frames // self.tubelet

  @property
  def n_frame_tokens(self) -> int:
    """Tokens of one (token) frame: gh * gw."""
    return self.grid[0] * self.grid[1]

  @property
  def n_image_tokens(self) -> int:
    """Tokens of the image (or clip) segment, time-major: token_frames * gh * gw."""
    return self.token_frames * self.n_frame_tokens

  @property
  def visual_shape(self) -> tuple[int, ...]:
    """One example of the visual modality: (H, W, C) for an image model (frames 1), (frames,
    H, W, C) for a clip model."""
    image = (self.image_size, self.image_size, self.channels)
    return image if self.frames == 1 else (self.frames, *image)

  @property
  def patch_dim(self) -> int:
    """Values of one token: tubelet * p * p * channels."""
    return self.tubelet * self.patch_size**2 * self.channels

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def layout(self) -> scan_order.SequenceLayout:
    gh, gw = self.grid
    grid = (gh, gw + 1) if self.row_end_tokens else (gh, gw)
    return scan_order.SequenceLayout(N_FIXED_PREFIX + self.n_pad_tokens, grid, self.max_text_len,
                                     frames=self.token_frames)


def timestep_features(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal features of t in [0, 1] (scaled by 1000, as DDPM/DiT): (b,) -> (b, dim)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _lp_dense(features, names, name, dtype, zero=False, use_bias=True):
  lp = nn.with_logical_partitioning
  init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
  return nn.Dense(features, dtype=dtype, name=name, use_bias=use_bias,
                  kernel_init=lp(init, names), bias_init=lp(nn.initializers.zeros, (names[1],)))


def _rms_norm(dtype, name):
  return nn.RMSNorm(dtype=dtype, name=name,
                    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)))


class TimeEmbedding(nn.Module):
  """t (b,) -> (b, width): sinusoidal features and a 2-layer MLP (DiT's TimestepEmbedder)."""
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t):
    h = timestep_features(t, self.width).astype(self.dtype)
    h = nn.silu(_lp_dense(self.width, (None, "embed"), "in", self.dtype)(h))
    return _lp_dense(self.width, ("mlp", "embed"), "out", self.dtype)(h)


class PooledTextEmbedding(nn.Module):
  """Noised text ids (b, T) -> one conditioning vector (b, width): the sum of a learned
  embedding of every revealed token ([MASK] positions contribute nothing, so an absent caption
  gives 0).

  The caption's counterpart of the class embedding, and added next to it: a table of its own
  (not the sequence input's), summed rather than averaged so one token that matters (a digit
  word among template words) is not diluted T-fold, initialised at 1/sqrt(T) so that a whole
  caption's sum starts at unit scale per channel like the class and time embeddings. A learned
  pooling of the sequence's own input embeddings (mean or attention, through an MLP) is
  dominated by the words every caption shares and dilutes the one that differs.
  No positions enter: it is a bag of the caption's tokens, word order reaches the image
  through the sequence.
  """
  vocab_size: int
  width: int
  max_len: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids):
    init = nn.with_logical_partitioning(nn.initializers.normal(self.max_len ** -0.5),
                                        ("vocab", "embed"))
    table = self.param("embedding", init, (self.vocab_size + 1, self.width), jnp.float32)
    revealed = (ids != self.vocab_size).astype(jnp.float32)[..., None]   # [MASK] == vocab_size
    return jnp.sum(jnp.take(table, ids, axis=0) * revealed, axis=1).astype(self.dtype)


class SwiGLU(nn.Module):
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    gate = _lp_dense(self.hidden, ("embed", "mlp"), "gate", self.dtype, use_bias=False)(x)
    up = _lp_dense(self.hidden, ("embed", "mlp"), "up", self.dtype, use_bias=False)(x)
    return _lp_dense(d, ("mlp", "embed"), "down", self.dtype, use_bias=False)(nn.silu(gate) * up)


class SelfAttention(nn.Module):
  """Bidirectional multi-head softmax attention (the Transformer baseline's mixer)."""
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, l, d = x.shape
    if d % self.heads:
      raise ValueError(f"attention: d_model {d} must be a multiple of attn_heads {self.heads}")
    qkv = _lp_dense(3 * d, ("embed", "mlp"), "qkv", self.dtype, use_bias=False)(x)
    q, k, v = jnp.split(qkv.reshape(b, l, 3, self.heads, d // self.heads), 3, axis=2)
    y = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0])
    return _lp_dense(d, ("mlp", "embed"), "out", self.dtype, use_bias=False)(y.reshape(b, l, d))


class DenoiserLayer(nn.Module):
  """One residual block, scanned over layers:

      x = x + gate * mixer(norm(x) * (1 + scale) + shift)      [+ the same around a SwiGLU]

  ``orders`` (2, L) int32 holds this layer's permutation and its inverse: the Mamba-2 mixer
  scans tokens in that order; the residual stream stays in canonical order. ``cond`` (b, 3, d)
  holds the conditioning of the prefix, image and text segments; ``segments`` (L,) maps each
  position to its segment. shift/scale/gate come from ``cond`` (adaLN-Zero, DiT): the gate starts
  at 0, so every block starts as the identity.
  """
  cfg: MDMConfig
  segments: tuple[int, ...]

  @nn.compact
  def __call__(self, x, orders, cond):
    cfg = self.cfg
    dtype = cfg.compute_dtype
    # Keep activations batch-sharded (FSDP params would otherwise pull them onto "embed").
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    n_mod = 6 if cfg.mlp_ratio > 0 else 3
    mod = _lp_dense(n_mod * cfg.d_model, ("embed", "mlp"), "adaln", dtype, zero=True)(
        nn.silu(cond.astype(dtype)))
    mod = jnp.split(jnp.take(mod, jnp.asarray(self.segments), axis=1), n_mod, axis=-1)
    h = _rms_norm(dtype, "mixer_norm")(x) * (1 + mod[1]) + mod[0]
    if cfg.backbone == "mamba2":
      h = scan_order.permute(h, orders[0])
      h = Mamba2(d_model=cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                 headdim=cfg.headdim, ngroups=cfg.ngroups, selective=cfg.selective,
                 chunk_size=cfg.chunk_size, ssd_impl=cfg.ssd_impl, pallas_target=cfg.pallas_target,
                 dtype=dtype, name="mixer")(h)
      h = scan_order.permute(h, orders[1])
    else:
      h = SelfAttention(cfg.attn_heads, dtype=dtype, name="mixer")(h)
    x = x + (mod[2] * h).astype(x.dtype)
    if cfg.mlp_ratio > 0:
      h = _rms_norm(dtype, "mlp_norm")(x) * (1 + mod[4]) + mod[3]
      h = SwiGLU(int(cfg.mlp_ratio * cfg.d_model), dtype=dtype, name="mlp")(h)
      x = x + (mod[5] * h).astype(x.dtype)
    return nn.with_logical_constraint(x, ACTIVATION_AXES), None


class Denoiser(nn.Module):
  """The multi-step selective diffusion network (see module docstring)."""
  cfg: MDMConfig

  def setup(self):
    cfg = self.cfg
    dtype = cfg.compute_dtype
    lp = nn.with_logical_partitioning
    d = cfg.d_model
    self.latent_in = _lp_dense(d, ("latent", "embed"), "latent_in", dtype)
    self.time_embed_img = TimeEmbedding(d, dtype=dtype, name="time_embed_img")
    self.time_embed_txt = TimeEmbedding(d, dtype=dtype, name="time_embed_txt")
    # Unit-scale tables, like the time embeddings they are summed with in the adaLN input (at
    # DiT's 0.02 the class was swamped by the time embedding for the first thousand steps).
    emb = lambda n, name: nn.Embed(n, d, dtype=dtype, name=name,
                                   embedding_init=lp(nn.initializers.normal(1.0),
                                                     (None, "embed")))
    self.class_embed = emb(cfg.num_classes + 1, "class_embed")  # last row: null class
    self.task_embed = emb(len(TASKS), "task_embed")
    if cfg.text_id_embed:
      self.text_id_embed = emb(cfg.vocab_size + 1, "text_id_embed")  # last row: [MASK]
    if cfg.text_pool_cond:
      self.text_pool = PooledTextEmbedding(cfg.vocab_size, d, cfg.max_text_len, dtype=dtype,
                                           name="text_pool")
    init = lp(nn.initializers.normal(0.02), (None, "embed"))
    self.pad_tokens = self.param("pad_tokens", init, (cfg.n_pad_tokens, d), jnp.float32)
    self.image_pos = self.param("image_pos", init, (cfg.n_frame_tokens, d), jnp.float32)
    if cfg.token_frames > 1:
      # Zero: see ``image_positions``.
      self.frame_pos = self.param("frame_pos", lp(nn.initializers.zeros, (None, "embed")),
                                  (cfg.token_frames, d), jnp.float32)
    self.text_pos = self.param("text_pos", init, (cfg.max_text_len, d), jnp.float32)
    self.modality = self.param("modality_embed", init, (2, d), jnp.float32)
    if cfg.row_end_tokens:
      self.row_end = self.param("row_end_token", lp(nn.initializers.normal(0.02), ("embed",)),
                                (d,), jnp.float32)
    layer = DenoiserLayer
    if cfg.remat:
      layer = nn.remat(layer, prevent_cse=not cfg.scan_layers)
    segments = tuple(int(i) for i in cfg.layout().segments())
    if cfg.scan_layers:
      self.layers = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=(0, nn.broadcast), length=cfg.n_layers, unroll=cfg.scan_unroll,
                            metadata_params={nn.PARTITION_NAME: "layers"})(
                                cfg, segments, name="layers")
    else:
      self.layer_list = [layer(cfg, segments, name=f"layers_{i}") for i in range(cfg.n_layers)]
    self.final_norm = _rms_norm(dtype, "final_norm")
    self.eps_head = _lp_dense(cfg.latent_dim, ("embed", "latent"), "eps_head", dtype, zero=True)
    self.score_head = _lp_dense(cfg.vocab_size + 1, ("embed", "vocab"), "score_head", dtype,
                                zero=True)

  def layer_orders(self) -> np.ndarray:
    """(n_layers, 2, L) int32: per-layer permutation and inverse (static)."""
    perms, invs = self.cfg.layout().schedule(self.cfg.directions, self.cfg.time_orders)
    period = perms.shape[0]
    idx = np.arange(self.cfg.n_layers) % period
    return np.stack([perms[idx], invs[idx]], axis=1).astype(np.int32)

  def image_positions(self) -> jax.Array:
    """(N, d_model) position embedding of the image (or clip) tokens, time-major.

    An image's is the learned (gh*gw, d) table ``image_pos``. A clip's token at (frame t, row
    r, column c) gets ``image_pos[r*gw + c] + frame_pos[t]``: the image's table for every frame
    plus a learned (T', d) table per frame index (factorised space + time, as ViViT and Latte
    do). ``frame_pos`` exists only when ``token_frames > 1``, so an image model's parameters,
    their names and shapes, and its outputs are exactly those without video; and it starts at
    zero, so a clip model's tree is an image model's plus ``frame_pos`` (tubelet 1): a clip
    model warm-started from an image checkpoint begins as that model's per-frame embedding. An
    additive table gets gradients from the first step whatever its start, and the time-major
    scans already tell frames apart by where they sit in the scan.
    """
    pos = self.image_pos
    if self.cfg.token_frames > 1:
      pos = (pos[None] + self.frame_pos[:, None]).reshape(-1, pos.shape[-1])
    return pos

  def __call__(self, z_img, t_img, z_txt, t_txt, sigma_txt, ids_t, class_id, task_id):
    """Predict image (or clip) noise and text log-scores.

    Args:
      z_img: (b, N, latent_dim) noised, unit-variance image latents; for a clip the
        N = token_frames * gh * gw tokens are time-major (``MDM.encode_clip``).
      t_img: (b,) image time in [0, 1].
      z_txt: (b, T, latent_dim) unit-variance latents of the noised ids ``ids_t``.
      t_txt: (b,) text time in [0, 1].
      sigma_txt: (b,) total text noise sigma(t_txt) (for the log-score scaling).
      ids_t: (b, T) noised ids ([MASK] == vocab_size).
      class_id: (b,) int, ``num_classes`` = null class.
      task_id: (b,) int index into ``TASKS``.
    Returns:
      eps (b, N, latent_dim) float32, log_score (b, T, vocab_size + 1) float32.
    """
    cfg = self.cfg
    dtype = cfg.compute_dtype
    b = z_img.shape[0]
    d = cfg.d_model
    if z_img.shape[1] != cfg.n_image_tokens:
      raise ValueError(
          f"Denoiser: z_img has {z_img.shape[1]} tokens, the model expects "
          f"{cfg.n_image_tokens} ({cfg.token_frames} frame(s) of {cfg.grid[0]}x{cfg.grid[1]}); "
          "encode clips (batch, frames, H, W, C) with encode_clip, images with encode_image")
    e_img, e_txt = self.time_embed_img(t_img), self.time_embed_txt(t_txt)
    e_cls, e_task = self.class_embed(class_id), self.task_embed(task_id)
    prefix = jnp.concatenate([
        e_img[:, None], e_txt[:, None], e_cls[:, None], e_task[:, None],
        jnp.broadcast_to(self.pad_tokens.astype(dtype), (b, cfg.n_pad_tokens, d)),
    ], axis=1)
    txt = self.latent_in(z_txt.astype(dtype))
    if cfg.text_id_embed:
      txt = txt + self.text_id_embed(ids_t)
    # Per-segment conditioning for the blocks' adaLN: each modality sees its own time; the
    # class, the task and the pooled caption are shared.
    shared = e_cls + e_task
    if cfg.text_pool_cond:
      shared = shared + self.text_pool(ids_t)
    cond = jnp.stack([shared + e_img + e_txt, shared + e_img, shared + e_txt], axis=1)
    img = (self.latent_in(z_img.astype(dtype)) + self.image_positions().astype(dtype)
           + self.modality[0].astype(dtype))
    gh, gw = cfg.grid
    if cfg.row_end_tokens:  # a time-major clip is token_frames * gh rows
      img = scan_order.insert_row_end_tokens(img, self.row_end, cfg.token_frames * gh, gw)
    txt = txt + self.text_pos.astype(dtype) + self.modality[1].astype(dtype)
    x = jnp.concatenate([prefix.astype(dtype), img, txt], axis=1)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)

    orders = jnp.asarray(self.layer_orders())
    if cfg.scan_layers:
      x, _ = self.layers(x, orders, cond)
    else:
      for i, layer in enumerate(self.layer_list):
        x, _ = layer(x, orders[i], cond)
    x = self.final_norm(x)

    n_pre = cfg.layout().n_prefix
    n_img = cfg.layout().n_image
    h_img = x[:, n_pre:n_pre + n_img]
    if cfg.row_end_tokens:
      h_img = scan_order.remove_row_end_tokens(h_img, cfg.token_frames * gh, gw)
    eps = self.eps_head(h_img).astype(jnp.float32)
    raw = self.score_head(x[:, n_pre + n_img:]).astype(jnp.float32)
    return eps, absorbing_log_score(raw, sigma_txt, ids_t, cfg.vocab_size, cfg.text_score)


class MDM(nn.Module):
  """VAE + denoiser. Methods are the pieces the losses and samplers compose."""
  cfg: MDMConfig

  def setup(self):
    cfg = self.cfg
    self.vae = UnifiedVAE(patch_dim=cfg.patch_dim, vocab_size=cfg.vocab_size,
                          width=cfg.vae_width, depth=cfg.vae_depth, latent_dim=cfg.latent_dim,
                          dtype=cfg.compute_dtype, name="vae")
    self.denoiser = Denoiser(cfg, name="denoiser")

  # --- VAE -----------------------------------------------------------------------------
  def encode_image(self, images):
    """images (b, H, W, C) in [-1, 1] -> mu, log_sigma (b, N, latent_dim)."""
    cfg = self.cfg
    expected = (cfg.image_size, cfg.image_size, cfg.channels)
    if tuple(images.shape[1:]) != expected:
      raise ValueError(f"MDM: images must be (batch, {expected[0]}, {expected[1]}, "
                       f"{expected[2]}), got {tuple(images.shape)}; the model's shapes come from "
                       "data.image_size and data.channels")
    self._check_no_tubelets("encode_image", "encode_clip")
    return self.vae.encode_image(patchify(images, cfg.patch_size))

  def decode_image(self, z):
    """z (b, N, latent_dim) (VAE scale, not unit-variance) -> images (b, H, W, C)."""
    cfg = self.cfg
    self._check_no_tubelets("decode_image", "decode_clip")
    return unpatchify(self.vae.decode_image(z), cfg.grid, cfg.patch_size, cfg.channels)

  def _check_no_tubelets(self, name, clip_name):
    if self.cfg.tubelet > 1:
      raise ValueError(f"MDM.{name}: model.tubelet={self.cfg.tubelet} makes a token from "
                       f"{self.cfg.tubelet} frames, so the model has no per-image tokens; use "
                       f"{clip_name} with clips (batch, frames, H, W, C)")

  def encode_clip(self, clips):
    """clips (b, T, H, W, C) in [-1, 1] -> mu, log_sigma (b, N, latent_dim), N = T/k * gh * gw
    tokens time-major (``vae.patchify_clip``; k = tubelet).

    The VAE is per token, so with tubelet 1 this is ``encode_image`` of every frame, frame
    after frame; a one-frame clip gives exactly ``encode_image`` of its frame.
    """
    cfg = self.cfg
    expected = (cfg.frames, cfg.image_size, cfg.image_size, cfg.channels)
    if tuple(clips.shape[1:]) != expected:
      raise ValueError(f"MDM: clips must be (batch, {', '.join(map(str, expected))}), got "
                       f"{tuple(clips.shape)}; the model's shapes come from model.frames, "
                       "data.image_size and data.channels")
    return self.vae.encode_image(patchify_clip(clips, cfg.patch_size, cfg.tubelet))

  def decode_clip(self, z):
    """z (b, N, latent_dim) (VAE scale) -> clips (b, T, H, W, C); inverse layout of
    ``encode_clip``."""
    cfg = self.cfg
    return unpatchify_clip(self.vae.decode_image(z), cfg.frames, cfg.grid, cfg.patch_size,
                           cfg.channels, cfg.tubelet)

  def encode_visual(self, x):
    """The visual modality as the config has it -> mu, log_sigma (b, N, latent_dim): images
    (b, H, W, C) through ``encode_image`` for an image model (frames 1), clips (b, T, H, W, C)
    through ``encode_clip`` otherwise. The losses and samplers call this (and
    ``decode_visual``), so every task of the task table runs on clips unchanged."""
    return self.encode_clip(x) if self.cfg.frames > 1 else self.encode_image(x)

  def decode_visual(self, z):
    """z (b, N, latent_dim) (VAE scale) -> images (b, H, W, C), or clips (b, T, H, W, C) for a
    clip model: the inverse of ``encode_visual``."""
    return self.decode_clip(z) if self.cfg.frames > 1 else self.decode_image(z)

  def encode_text(self, ids):
    return self.vae.encode_text(ids)

  def decode_text(self, z):
    return self.vae.decode_text(z)

  def latent_scale(self):
    return self.vae.latent_scale()

  def update_latent_std(self, z_image=None, z_text=None, text_mask=None):
    self.vae.update_latent_std(z_image, z_text, text_mask)

  # --- Denoiser ------------------------------------------------------------------------
  def denoise(self, z_img, t_img, ids_t, t_txt, sigma_txt, class_id, task_id,
              text_latents: Optional[jax.Array] = None):
    """Noised unit-variance image latents + noised ids -> (image output, log_score).

    The image output is the prediction of the loss's target (``loss.image_target``: the noise
    eps, or v); ``Processes.image_eps`` reads it as eps for the samplers.

    The text input is the (unit-variance) VAE mean of ``ids_t``; pass ``text_latents`` to
    supply it directly (e.g. with gradients to the encoder).
    """
    if text_latents is None:
      mu, _ = self.vae.encode_text(ids_t)
      text_latents = jax.lax.stop_gradient(mu * self.vae.latent_scale()[1])
    return self.denoiser(z_img, t_img, text_latents, t_txt, sigma_txt, ids_t, class_id, task_id)

  def __call__(self, images, ids):
    """Touches every parameter (for ``init``): images (b, H, W, C), or clips (b, T, H, W, C)
    (a clip model, ``frames`` > 1, takes only clips)."""
    b = images.shape[0]
    clips = images.ndim == 5
    if self.cfg.frames > 1 and not clips:
      raise ValueError(f"MDM: a clip model (model.frames={self.cfg.frames}) takes clips "
                       f"(batch, {self.cfg.frames}, H, W, C), got {tuple(images.shape)}; pass "
                       "clips, or set model.frames=1 for images")
    mu_i, _ = self.encode_clip(images) if clips else self.encode_image(images)
    mu_t, _ = self.encode_text(ids)
    recon_img = self.decode_clip(mu_i) if clips else self.decode_image(mu_i)
    logits = self.decode_text(mu_t)
    zeros = jnp.zeros((b,), jnp.float32)
    ints = jnp.zeros((b,), jnp.int32)
    image_out, log_score = self.denoise(mu_i, zeros, ids, zeros, zeros + 1.0, ints, ints,
                                        text_latents=mu_t)
    return recon_img, logits, image_out, log_score
