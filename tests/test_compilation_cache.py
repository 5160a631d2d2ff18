"""The run's persistent compilation cache (tests/conftest.py) reaches the subprocesses: a program
one process compiled is read back by the next instead of compiled again, and programs with host
callbacks are never cached (their callbacks belong to the process that compiled them)."""
import os
import sys

import jax

import subproc

PROGRAM = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax._src import monitoring
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
seen = []
def with_callback(x):
  jax.debug.callback(lambda a: seen.append(np.asarray(a)), x, ordered=True)
  return x - 1
x = jnp.full((7, 5), float(sys.argv[1]))
y = jax.jit(lambda x: jnp.tanh(x @ x.T * 0.37).sum(0))(x)
z = jax.jit(with_callback)(x)
jax.effects_barrier()
print(events.count("/jax/compilation_cache/cache_hits"),
      events.count("/jax/compilation_cache/cache_misses"), float(y[0]), float(seen[0][0, 0]))
"""


def test_a_subprocess_reads_back_what_another_compiled():
  cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
  assert jax.config.jax_compilation_cache_dir == cache
  repo = os.path.realpath(subproc.REPO)
  assert not os.path.realpath(cache).startswith(repo + os.sep)   # never in the checkout
  runs = []
  for value in ("0.123", "0.123", "0.456"):
    proc = subproc.run([sys.executable, "-c", PROGRAM, value])
    assert proc.returncode == 0, proc.stderr[-2000:]
    hits, misses, y, seen = proc.stdout.split()
    runs.append((int(hits), int(misses), float(y), float(seen)))
  first, second, third = runs
  # The first compiled at least the matmul (no other test has its shapes and constant); the
  # second read back every program the first compiled or found, and compiled none.
  assert first[1] >= 1
  assert second[0] == first[0] + first[1] and second[1] == 0
  assert second[2:] == first[2:]
  # Another input value, the same programs (the value is an argument): all read back, a new
  # result, and the callback (never cached: compiled in each process) saw this process's value.
  assert third[0] == second[0] and third[1] == 0 and third[2] != first[2]
  assert abs(third[3] - 0.456) < 1e-6 and abs(first[3] - 0.123) < 1e-6
