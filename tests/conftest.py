"""Test-wide set-up, before JAX starts: 8 fake CPU devices (for the sharding tests), XLA:CPU
compiling without its optimisation passes, and one persistent XLA compilation cache for the
whole run.

The tests' programs are tiny and run a few times each, so compiling them dominates the suite:
`--xla_backend_optimization_level=0` with LLVM's expensive passes off halves the compile time of
the tiny train step (the tests' largest program), and XLA:CPU's loop emitters in place of its
fusion emitters (`--xla_cpu_use_fusion_emitters=false`, where the installed XLA still has them:
jaxlib 0.12 does not) take it from about 6 to 3.4 s, tracing included. Neither changes a result
a test checks (every comparison is between programs compiled alike, or against an oracle with a
tolerance). The CLIs keep XLA's defaults: at full optimisation the fusion emitters give the
faster step (docs/results.md, "The test suite"). The flags travel with XLA_FLAGS to every
subprocess (the CLI runs, the notebook's kernel) and are part of the compilation cache's key, so
every process reads back the same executables.

The cache is a fresh temporary folder made by the run's first process (pytest, or
pytest-xdist's controller) and removed when it ends; the xdist workers and every subprocess a
test starts inherit it through the environment, so a program compiled once (the tiny train step,
the samplers) is read back by every later process instead of compiled again. A hit returns the
executable XLA built for the same key (the program's HLO, the compile options, XLA_FLAGS, the
jax/jaxlib version and the backend), so it changes how long a test takes, never what it sees.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0",
          "--xla_llvm_disable_expensive_passes=true")
_LOOP_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _xla_knows(flag):
  """Whether this jaxlib's XLA accepts `flag`: XLA aborts any process whose XLA_FLAGS name a flag
  it does not know, and jaxlib 0.12 removed the loop emitters with their flag. Asked of a
  throwaway process (about a second, once per run: the workers and subprocesses inherit the
  answer through XLA_FLAGS)."""
  probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"],
                         env={**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, timeout=300, check=False)
  return probe.returncode == 0


for _flag in _FLAGS:
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
if (_LOOP_EMITTERS.split("=")[0] not in os.environ["XLA_FLAGS"]
    and not os.environ.get("PYTEST_XDIST_WORKER") and _xla_knows(_LOOP_EMITTERS)):
  os.environ["XLA_FLAGS"] += " " + _LOOP_EMITTERS

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


# Scheduling for `pytest -n 2` (setup.cfg: --dist loadgroup --no-loadscope-reorder): the tests
# that share an expensive module fixture (a training run, a chain of runs) form one group, run by
# one worker, so that no fixture is built twice; the work is handed out in this file's order,
# longest first, so that the two workers finish together instead of one waiting on a late
# multi-minute test. The order changes when a test runs, never what it checks.
_GROUPS = {  # module (or module::test) -> its group; others go to whichever worker is free
    "test_multiprocess.py": "multiprocess",   # one chain of 2-process runs
    "test_api.py": "api",                     # one trained workdir
    "test_train.py": "train",                 # runs A, B, C and the sample/evaluate CLIs
    "test_evaluate_video.py": "video",   # these two share one trained video_tiny workdir
    "test_api_video.py": "video",
    # The dry run starts with the folder test and runs alongside it:
    "test_cli.py::test_train_on_prepared_folder_counts_conversions_and_truncations": "dry_run",
    "test_cli.py::test_dry_run_on_eight_devices": "dry_run",
}
_FIRST = ["test_multiprocess.py", "test_api.py", "test_train.py", "test_named_configs.py",
          "test_notebook.py", "test_cli.py", "test_evaluate_video.py", "test_api_video.py",
          "test_bench.py", "test_run_bookkeeping.py",
          "test_ssd.py", "test_samplers.py"]


def _group_of(file_name, test_name):
  return _GROUPS.get(file_name) or _GROUPS.get(f"{file_name}::{test_name}")


@pytest.hookimpl(tryfirst=True)   # before xdist's own, which reads the group marks
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    group = _group_of(item.path.name, item.name)
    if group:
      item.add_marker(pytest.mark.xdist_group(group))
  rank = {name: i for i, name in enumerate(_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(_FIRST)))   # stable within a file


def pytest_xdist_node_collection_finished(node, ids):
  """On xdist's controller, each worker's collected node ids: a grouped test's id ends in
  "@group" (xdist's loadgroup adds it). Without it the suite would still pass, each worker
  building the shared fixtures again (minutes more), so the run stops here instead."""
  del node
  lost = [nodeid for nodeid in ids if "@" not in nodeid.rsplit("]", 1)[-1]   # no group suffix
          and _group_of(os.path.basename(nodeid.split("::")[0]), nodeid.split("::")[-1])]
  if lost:
    pytest.exit(f"pytest-xdist did not group the tests that share a fixture ({len(lost)}, e.g. "
                f"{lost[0]}): this pytest and pytest-xdist do not work together "
                "(pytest-dev/pytest-xdist#1386); install the versions setup.cfg's test extra "
                "admits: pip install -e '.[test]'", returncode=4)


@pytest.fixture(scope="session")
def video_workdir(tmp_path_factory):
  """One `video_tiny` workdir trained by the CLI (3 steps, one device), shared by the video API
  and `evaluate` tests (one group above, so one worker trains it). Sampling settings are the
  ones `evaluate` reads from the config: 2 steps, greedy text (VQA decoded once)."""
  import subproc
  wd = tmp_path_factory.mktemp("video_tiny") / "wd"
  proc = subproc.run_module(
      "experiments.train", "--config=video_tiny", f"--workdir={wd}", "--config.total_steps=3",
      "--config.checkpoint_every=3", "--config.log_every=1", "--config.optim.warmup_steps=1",
      "--config.sample.steps=2", "--config.sample.text_temperature=0.0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return wd
