#!/usr/bin/env bash
# Installs the Quix Streams peer of the end-to-end benchmark (benches/peers/quix_pipeline.py) into a
# virtualenv of its own, $TOUCHPOINT_HOME/bench-venv (default ~/.touchpoint/bench-venv), with the exact
# versions of benches/peers/requirements.txt. Idempotent: pip runs only when a pinned version is missing,
# so a second run is instant. Prints the venv's python on stdout (everything else goes to stderr), so a
# harness can do PY=$(benches/peers/install.sh).
#   PYTHON=python3.12 benches/peers/install.sh   # build the venv from another interpreter
set -euo pipefail

TOUCHPOINT_HOME="${TOUCHPOINT_HOME:-$HOME/.touchpoint}"
VENV="$TOUCHPOINT_HOME/bench-venv"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/requirements.txt"

log() { echo "[bench-peers] $*" >&2; }

# Debian splits venv/ensurepip out of the interpreter (package python3-venv): without it
# `python3 -m venv` fails half-way and leaves a venv without pip.
has_venv_module() { "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; }

ensure_venv_module() {
  has_venv_module && return
  if [ -f /etc/debian_version ] && command -v apt-get >/dev/null; then
    log "$PYTHON has no venv/ensurepip module: installing python3-venv (apt-get)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
  fi
  if ! has_venv_module; then
    # python3-venv only serves Debian's own python3; another interpreter first on PATH needs its own.
    log "$PYTHON ($(command -v "$PYTHON")) still has no venv module; set PYTHON to an interpreter that has one"
    exit 1
  fi
}

ensure_venv() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pip' 2>/dev/null; then
    return
  fi
  ensure_venv_module
  log "creating virtualenv $VENV"
  mkdir -p "$TOUCHPOINT_HOME"
  "$PYTHON" -m venv --clear "$VENV"
}

# Prints the requirements whose pinned version is not the installed one (nothing when all are present).
missing_requirements() {
  "$VENV/bin/python" - "$REQUIREMENTS" <<'PY'
import importlib.metadata as metadata
import sys

for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, version = line.partition("==")
    try:
        present = metadata.version(name)
    except metadata.PackageNotFoundError:
        present = None
    if present != version:
        print(line)
PY
}

ensure_venv
missing="$(missing_requirements)"
if [ -z "$missing" ]; then
  log "all pinned packages present in $VENV"
else
  log "installing $(echo "$missing" | wc -l) pinned package(s) into $VENV: $(echo "$missing" | tr '\n' ' ')"
  # The whole file, so pip checks the set is consistent; packages already at their pin are skipped.
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS" >&2
  missing="$(missing_requirements)"
  if [ -n "$missing" ]; then
    log "still not at their pinned version after pip: $missing"
    exit 1
  fi
fi
log "venv: $VENV"
echo "$VENV/bin/python"
