"""The run's metrics: ``metrics.jsonl`` (one JSON object a logged step) and TensorBoard events
(the scalars, and the sample grids: PNG images, a clip model's animated GIFs).

A resumed run continues the log from the restored step: records of steps after it (logged
before a kill, but past the checkpoint the run restarts from) are dropped from
``metrics.jsonl`` when the log is opened, and TensorBoard is told to purge its events from
that step on (``SummaryWriter(purge_step=...)``), so each step appears once. A line cut short
by a kill is dropped too. Files go through ``etils.epath`` (local or ``gs://``): locally the
file is appended to; an object store cannot append, so there the lines are kept in memory and
the whole object is rewritten at each write.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from etils import epath

from mdm_jax.training import paths

METRICS_FILE = "metrics.jsonl"
_log = logging.getLogger(__name__)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl (lines that do not parse are skipped)."""
  records = []
  for line in epath.Path(path).read_text().splitlines():
    try:
      records.append(json.loads(line))
    except ValueError:
      continue
  return records


def rewind(path: epath.Path, last_step: int) -> int:
  """Keeps only the records of steps <= ``last_step`` (atomically); returns how many were
  dropped."""
  if not path.exists():
    return 0
  lines = path.read_text().splitlines()
  kept = []
  for line in lines:
    try:
      if int(json.loads(line)["step"]) <= last_step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      pass  # a line cut short by a kill, or not a record
  dropped = len(lines) - len(kept)
  if dropped:
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text("".join(l + "\n" for l in kept))
    tmp.replace(path)
  return dropped


class MetricsLog:
  """Appends step records to ``workdir/metrics.jsonl`` and, optionally, TensorBoard.

  Args:
    workdir: the run directory.
    start_step: the step the run (re)starts from: 0 for a fresh run, the restored
      checkpoint's step on resume; later records in the log are dropped.
    enabled: False on processes other than 0 (nothing is written).
    tensorboard_dir: where TensorBoard events go, or None for none.
  """

  def __init__(self, workdir: str | os.PathLike, *, start_step: int, enabled: bool = True,
               tensorboard_dir: str | None = None):
    self.enabled = enabled
    self.path = epath.Path(workdir) / METRICS_FILE
    self._writer = None
    if not enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    dropped = rewind(self.path, start_step)
    if dropped:
      _log.info("Dropped %d metrics records after the restored step %d.", dropped, start_step)
    if paths.is_local(self.path):
      self._file, self._text = self.path.open("a"), None
    else:
      self._file, self._text = None, self.path.read_text() if self.path.exists() else ""
    if tensorboard_dir is not None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(tensorboard_dir,
                                   purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, record: dict[str, float]) -> None:
    if not self.enabled:
      return
    line = json.dumps({"step": int(step), **record}) + "\n"
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
    else:
      self._text += line
      self.path.write_text(self._text)
    if self._writer is not None:
      for k, v in record.items():
        self._writer.add_scalar(k, v, step)

  def write_image_file(self, step: int, tag: str, path: str | os.PathLike) -> None:
    """The encoded image at ``path`` (a PNG grid, or a clip model's animated GIF grid) as a
    TensorBoard image summary ``tag`` at ``step``; TensorBoard's image dashboard plays a GIF.

    This is the summary tensorboardX's ``add_video`` writes (an image summary holding a GIF),
    but ``add_video`` encodes the GIF with moviepy, which is not a dependency, and the trainer
    has already encoded the grid (``sample_io.save_gif_grid``), so its bytes go in as they are.
    """
    if self._writer is None:
      return
    import io  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto.summary_pb2 import Summary  # pylint: disable=g-import-not-at-top
    data = epath.Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
      (width, height), mode, palette = img.size, img.mode, img.getpalette() or []
    if mode == "P":   # a GIF's frames: grey when every palette entry is
      grey = all(palette[i] == palette[i + 1] == palette[i + 2]
                 for i in range(0, len(palette) - 2, 3))
      mode = "L" if grey else "RGB"
    colorspace = {"1": 1, "L": 1, "LA": 2, "RGBA": 4}.get(mode, 3)
    summary = Summary(value=[Summary.Value(tag=tag, image=Summary.Image(
        height=height, width=width, colorspace=colorspace, encoded_image_string=data))])
    # SummaryWriter has no public call for an encoded image; add_image goes through the same
    # file writer after encoding an array itself.
    self._writer._get_file_writer().add_summary(summary, step)  # pylint: disable=protected-access

  def close(self) -> None:
    if not self.enabled:
      return
    if self._file is not None:
      self._file.close()
    if self._writer is not None:
      self._writer.close()
