#!/usr/bin/env bash
# The test command: installs (if missing) and starts the local stack with an empty broker log, runs
# every test of the workspace against it, and stops the stack again, whatever the outcome. `.ci/run`
# calls exactly this.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$ROOT/deploy/scripts/stack.sh" reset
trap '"$ROOT/deploy/scripts/stack.sh" stop' EXIT

# `services`: the integration tests that need the servers started above (a plain `cargo test` skips them).
cargo test --workspace --features touchpoint/services,touchpoint-connectors/services "$@"
