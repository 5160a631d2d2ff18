"""Where a run's files live: local paths and object-store URIs (``gs://``) behave differently
for atomic creation, appends and renames."""
from __future__ import annotations

import os


def is_local(path: str | os.PathLike) -> bool:
  """True for a local file path, False for a URI (gs://, s3://, ...)."""
  return "://" not in os.fspath(path)
