#!/usr/bin/env bash
# The test command (README "Tests", and what CI runs): build tools, lints, then every test.
# Clippy fails on any warning, and on an `unsafe` block without a `// SAFETY:` comment.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo clippy --release --workspace --all-targets --quiet -- \
    -D warnings -W clippy::undocumented_unsafe_blocks
cargo test --release --workspace
