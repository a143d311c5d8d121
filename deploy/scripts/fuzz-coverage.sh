#!/usr/bin/env bash
# Runs every fuzz target of the stable harness (operators/tests/fuzz.rs, connectors/tests/fuzz_envelope.rs)
# with source-based coverage and prints, per target, how many inputs it ran and how much of the code it
# aims at it reached (lines and regions, from llvm-cov).
#
#   deploy/scripts/fuzz-coverage.sh [cases per target, default 100000]
#
# Needs rustup's llvm-tools (added here when missing). Builds into target/coverage, apart from the normal
# build; a heavy build: do not run it beside another one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CASES="${1:-100000}"
cd "$ROOT"

if ! rustup component list --installed 2>/dev/null | grep -q '^llvm-tools'; then
  rustup component add llvm-tools
fi
TOOLS="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin"
OUT="$ROOT/target/coverage"
mkdir -p "$OUT"
export CARGO_TARGET_DIR="$OUT"
export RUSTFLAGS="-C instrument-coverage"
# Instrumented build scripts and tests write profiles too: into the output, not the working tree.
export LLVM_PROFILE_FILE="$OUT/prof/build/%p-%m.profraw"

# The test binary of `$1` (package) / `$2` (test target).
binary() {
  cargo test -p "$1" --test "$2" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$2" | tail -1
}

# target: package test-binary test-name, then the sources it aims at.
TARGETS=(
  "touchpoint-operators fuzz json_events operators/src/decode/event.rs operators/src/normalize"
  "touchpoint-operators fuzz avro_events operators/src/decode/avro.rs operators/src/decode/mod.rs"
  "touchpoint-operators fuzz avro_fast_path_matches_the_generic_path operators/src/decode/avro.rs"
  "touchpoint-operators fuzz consent_records operators/src/consent.rs"
  "touchpoint-operators fuzz journey_expressions operators/src/journey/expr.rs"
  "touchpoint-connectors fuzz_envelope envelopes connectors/src/channels/envelope.rs"
)

printf '%-42s %10s %8s %8s  %s\n' target inputs lines regions sources
for t in "${TARGETS[@]}"; do
  read -r pkg bin test sources <<<"$t"
  exe="$(binary "$pkg" "$bin")"
  dir="$OUT/prof/$test"
  rm -rf "$dir" && mkdir -p "$dir"
  started=$(date +%s)
  LLVM_PROFILE_FILE="$dir/%p-%m.profraw" TOUCHPOINT_FUZZ_CASES="$CASES" "$exe" --exact "$test" --test-threads 1 >/dev/null
  elapsed=$(( $(date +%s) - started ))
  "$TOOLS/llvm-profdata" merge -sparse "$dir"/*.profraw -o "$dir/merged.profdata"
  # shellcheck disable=SC2086 # the sources are several paths
  summary="$("$TOOLS/llvm-cov" report "$exe" -instr-profile="$dir/merged.profdata" $sources | tail -1)"
  # TOTAL regions missed cover% functions missed executed% lines missed cover% ...
  regions="$(awk '{print $4}' <<<"$summary")"
  lines="$(awk '{print $10}' <<<"$summary")"
  # Each case feeds two inputs (arbitrary bytes and a mutation) or one (the expression soup: two parses).
  printf '%-42s %10s %8s %8s  %s (%ss)\n' "$test" "$((CASES * 2))" "$lines" "$regions" "$sources" "$elapsed"
done
