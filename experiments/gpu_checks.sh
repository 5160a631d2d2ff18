#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a short loan of one GPU (H100/H200 class):
#   1. the Pallas (Triton) SSD kernel against the "xla" path on the device, values and
#      gradients in f32 and bf16 (``mdm_jax.ssm.kernel_check``, the training start-up check);
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
  # The kernel on this device against the "xla" path (itself tested against the sequential scan),
  # values and gradients, at the bench's head dim and state size: the training start-up check.
  python - <<'EOF'
from mdm_jax.ssm.kernel_check import check_kernel
for dtype in ("float32", "bfloat16"):
  c = check_kernel(chunk_size=64, headdim=64, d_state=128, dtype=dtype)
  print(f"pallas {dtype} on {c.backend}: max rel err {c.max_error:.2e} (tol {c.tol})",
        "ok" if c.ok else f"FAIL {c.error or ''}")
  assert c.ok, c
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
