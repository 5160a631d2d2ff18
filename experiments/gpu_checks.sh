#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a short loan of one GPU (H100/H200 class):
#   1. the Pallas (Triton) SSD kernel against the sequential-scan oracle on the device
#      (tests/test_pallas_gpu.py-style check inlined below: values and gradients, bf16 and f32);
#   2. `bench ssd` for pallas and xla: bf16, batch 4, 32 heads, headdim 64, state 128, 2K-64K;
#   3. `bench model`: the Mamba-2 backbone against the Transformer at growing image lengths.
# Results go to $OUT (default /tmp/mdm_gpu) as JSON, and the tables to stdout.
#
# The model bench reads configs through ml_collections. Where the GPU machine has no package
# index, download its wheel beside the repository first and carry the folder:
#   pip download ml_collections PyYAML --no-deps -d .gpu_wheels
# Environment overrides (for a CPU smoke run of the plumbing): IMPLS, LENGTHS, REPEATS,
# MODEL_TOKENS, SKIP_CHECK=1.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mdm_gpu}
IMPLS=${IMPLS:-pallas,xla}
LENGTHS=${LENGTHS:-2048,4096,8192,16384,32768,65536}
REPEATS=${REPEATS:-5}
MODEL_TOKENS=${MODEL_TOKENS:-256,1024,4096,16384}
mkdir -p "$OUT"
python -c "import jax; print('devices:', jax.devices())"

if [ "${SKIP_CHECK:-0}" != 1 ]; then
  # The kernel on hardware against the scan oracle (the same tolerances as the CPU tests).
  python - <<'EOF'
import jax, jax.numpy as jnp, numpy as np
from mdm_jax.ssm.ssd import ssd
rs = np.random.RandomState(0)
b, l, h, p, n = 2, 1000, 4, 64, 128
x = rs.randn(b, l, h, p).astype(np.float32)
dt = np.log1p(np.exp(rs.randn(b, l, h))).astype(np.float32) * 0.1
A = -np.exp(rs.randn(h)).astype(np.float32)
B = rs.randn(b, l, 1, n).astype(np.float32) / np.sqrt(n)
C = rs.randn(b, l, 1, n).astype(np.float32) / np.sqrt(n)
def grads(impl, dtype):
  f = lambda *a: jnp.sum(ssd(*a, chunk_size=64, impl=impl)[0].astype(jnp.float32) ** 2)
  args = [jnp.asarray(v, dtype) if v.ndim > 1 else jnp.asarray(v) for v in (x, dt, A, B, C)]
  y = ssd(*args, chunk_size=64, impl=impl)[0]
  return [np.asarray(y, np.float32)] + [np.asarray(g, np.float32) for g in
                                       jax.grad(f, argnums=(0, 1, 2, 3, 4))(*args)]
for dtype, tol in ((jnp.float32, 2e-3), (jnp.bfloat16, 5e-2)):
  want, got = grads("scan", jnp.float32), grads("pallas", dtype)
  for name, w, g in zip(("y", "dx", "ddt", "dA", "dB", "dC"), want, got):
    err = np.max(np.abs(w - g)) / (np.max(np.abs(w)) + 1e-6)
    print(f"pallas {jnp.dtype(dtype).name} {name}: max rel err {err:.2e}", "ok" if err < tol else "FAIL")
    assert err < tol, (dtype, name, err)
EOF
fi

python -m experiments.bench ssd --impl="$IMPLS" --dtype=bfloat16 --batch=4 --heads=32 \
  --headdim=64 --state=128 --lengths="$LENGTHS" --repeats="$REPEATS" --max_gib=100 \
  --out="$OUT/ssd.json"

if ! python -c "import ml_collections" 2>/dev/null && [ -d .gpu_wheels ]; then
  python -m pip install -q --no-index --find-links=.gpu_wheels ml_collections
fi
python -m experiments.bench model --image_tokens="$MODEL_TOKENS" --repeats=2 --out="$OUT/model.json"
echo "GPU checks done; JSON in $OUT"
