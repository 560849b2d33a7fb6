#!/usr/bin/env bash
# The test command: every test on whatever adapter boomgpu picks (lavapipe
# without a GPU). One build, shared by all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --all-targets --locked
cargo test --locked -- --test-threads="${BOOMGPU_TEST_THREADS:-2}"
