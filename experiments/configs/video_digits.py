"""The laptop video run: the digits network on the bundled moving digits (nothing downloaded).

Each clip is 8 frames of a 16x16 canvas with one bundled digit moving up, down, left or right
through the canvas's middle (`data.moving_digits`, its default path). The VAE encodes each
tubelet of 2 frames of the whole canvas (16x16 pixels, 512 values) as one token of 32 latent
channels: 4 clip tokens, one per token frame. Every task of the table trains on clips in one
mixture: class-to-video, text-to-video, video captioning, video VQA, joint clip+caption and text;
prediction and interpolation sample as inpainting in time.

With one token per token frame the clip scan schedule's orders (4 image orders over the frames,
2 time-major) all run along time, forward or reversed; the orders over rows and columns matter
where a frame has a grid of tokens (``video_frame_orders``, ``video256``). Whole-frame tokens
are the budget's choice: 4 tokens make a step 1.14x the digits run's (8x8-pixel tubelets, 16
tokens: 1.86x), so 2400 steps fit in the budget of twice the digits run's training time (1.65-1.73x
its loop, measured side by side), and reading a clip's digit needs those steps; at equal steps
whole-frame tokens draw the digit twice as often as 8x8-pixel ones and read it as often
(docs/results.md, "Whole-frame tubelets"). Lists only what it changes from ``digits`` (whose v
target and unguided class sampler it keeps): the clip data and tubelets, the steps, a task
mixture that weights text-to-clip 1.5, and no caption guidance.
"""
from experiments.configs import digits


def get_config():
  c = digits.get_config()
  c.total_steps = 2400
  c.data.update(dict(name="moving_digits", image_size=16, max_text_len=16))
  c.model.update(dict(frames=8, tubelet=2, patch_size=16, latent_dim=32, chunk_size=32))
  # Task order: class2img, t2i, caption, vqa, joint, text (class2img and t2i are on clips).
  c.loss.task_weights = (0.5, 1.5, 1.0, 1.5, 0.25, 0.25)
  # Text-to-clip unguided: the digits run's caption guidance (6) makes clips that read as another
  # digit (text-to-video reads as the caption's digit 0.41-0.50 at 6, 0.74-0.85 at 1).
  c.sample.caption_guidance = 1.0
  return c
