"""Test-wide set-up, before JAX starts: 8 fake CPU devices (for the sharding tests), XLA:CPU
compiling without its optimisation passes, and one persistent XLA compilation cache for the
whole run.

The tests' programs are tiny and run a few times each, so compiling them dominates the suite:
`--xla_backend_optimization_level=0` with LLVM's expensive passes off halves the compile time of
the tiny train step (the tests' largest program) and changes no result a test checks (every
comparison is between programs compiled alike, or against an oracle with a tolerance). The flags
travel with XLA_FLAGS to every subprocess (the CLI runs, the notebook's kernel) and are part of
the compilation cache's key, so every process reads back the same executables.

The cache is a fresh temporary folder made by the run's first process (pytest, or
pytest-xdist's controller) and removed when it ends; the xdist workers and every subprocess a
test starts inherit it through the environment, so a program compiled once (the tiny train step,
the samplers) is read back by every later process instead of compiled again. A hit returns the
executable XLA built for the same key (the program's HLO, the compile options, XLA_FLAGS, the
jax/jaxlib version and the backend), so it changes how long a test takes, never what it sees.
"""
import os
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0",
          "--xla_llvm_disable_expensive_passes=true")
for _flag in _FLAGS:
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

_CACHE_VAR = "MDM_TEST_COMPILATION_CACHE"   # set by the process that made the folder
_made_cache = None
if not os.environ.get(_CACHE_VAR):
  if os.environ.get("PYTEST_XDIST_TESTRUNUID"):  # a worker whose controller did not load this
    _cache = os.path.join(tempfile.gettempdir(),
                          "mdm-jax-xla-cache-" + os.environ["PYTEST_XDIST_TESTRUNUID"])
    os.makedirs(_cache, exist_ok=True)
  else:
    _cache = _made_cache = tempfile.mkdtemp(prefix="mdm-jax-xla-cache-")
  os.environ[_CACHE_VAR] = _cache
# Read by jax at import, here and in every subprocess: every compiled program is cached, however
# small and however quickly compiled (jax's defaults keep only those over 1 s).
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_CACHE_VAR]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
if "jax" in sys.modules:   # imported before this file (by a plugin): set its config directly
  for _name, _value in (("jax_compilation_cache_dir", os.environ[_CACHE_VAR]),
                        ("jax_persistent_cache_min_compile_time_secs", 0.0),
                        ("jax_persistent_cache_min_entry_size_bytes", -1)):
    sys.modules["jax"].config.update(_name, _value)


def pytest_unconfigure(config):
  del config
  if _made_cache:
    shutil.rmtree(_made_cache, ignore_errors=True)
