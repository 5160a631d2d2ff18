"""The CLIs' choice of allocator: when to run again under tcmalloc, and that it happens."""
from __future__ import annotations

import os
import sys

import pytest

from experiments import allocator
import subproc

LIB = "libtcmalloc_minimal.so.4"


def test_preloads_an_installed_tcmalloc_before_what_is_preloaded():
  env = allocator.tcmalloc_environ({"PATH": "/bin", "LD_PRELOAD": "libfoo.so"}, LIB)
  assert env == {"PATH": "/bin", "LD_PRELOAD": f"{LIB} libfoo.so"}
  assert allocator.tcmalloc_environ({}, LIB) == {"LD_PRELOAD": LIB}


@pytest.mark.parametrize("environ, library", [
    ({}, None),                                           # not installed
    ({"LD_PRELOAD": f"/usr/lib/{LIB}"}, LIB),              # already loaded: run once only
    ({"MDM_MALLOC": "system"}, LIB),                      # asked for the system allocator
])
def test_goes_on_as_is(environ, library):
  assert allocator.tcmalloc_environ(environ, library) is None


def test_finds_the_minimal_library_first():
  found = {"tcmalloc_minimal": LIB, "tcmalloc": "libtcmalloc.so.4"}
  assert allocator.find_tcmalloc(found.get) == LIB
  assert allocator.find_tcmalloc({"tcmalloc": "libtcmalloc.so.4"}.get) == "libtcmalloc.so.4"
  assert allocator.find_tcmalloc({}.get) is None


@pytest.mark.skipif(allocator.find_tcmalloc() is None or not sys.platform.startswith("linux"),
                    reason="needs an installed tcmalloc (apt-get install libtcmalloc-minimal4)")
def test_a_cli_runs_itself_again_under_tcmalloc():
  code = ("import os, sys; from experiments import allocator; allocator.reexec_with_tcmalloc(); "
          "maps = open('/proc/self/maps').read(); "
          "print(os.environ['LD_PRELOAD'], 'tcmalloc' in maps, sys.argv[1:])")
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MDM_MALLOC")}
  proc = subproc.run([sys.executable, "-c", code, "--flag=1"], env_=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout.split()
  assert out[0] == allocator.find_tcmalloc() and out[1] == "True", out
  assert out[2:] == ["['--flag=1']"]


def test_in_use_reads_the_preload(monkeypatch):
  monkeypatch.setenv("LD_PRELOAD", f"/usr/lib/{LIB}")
  assert allocator.in_use() == "tcmalloc"
  monkeypatch.delenv("LD_PRELOAD")
  assert allocator.in_use() == "system"
