#!/usr/bin/env bash
# Installs the local stack's real services, pinned, into $TOUCHPOINT_HOME (default ~/.touchpoint).
# Each step is skipped when the pinned version is already present, so a second run is instant.
#   - Apache Kafka 4.4.0 broker + KRaft controller (Maven Central jars, resolved by deploy/kafka/pom.xml;
#                        needs Java 17+ and Maven)
#   - rivven-schema 0.0.22  Confluent-compatible Schema Registry (crates.io)
#   - chdb-core 26.9.0   ClickHouse engine (PyPI wheel), served over HTTP by deploy/clickhouse/launcher.py
#   - aiosmtpd 1.4.6     SMTP server of the channel peers (PyPI, with its deps atpublic and attrs pinned),
#                        run by deploy/peers/peers.py in the same virtualenv
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOUCHPOINT_HOME="${TOUCHPOINT_HOME:-$HOME/.touchpoint}"
TOOLS="$TOUCHPOINT_HOME/tools"
VENV="$TOUCHPOINT_HOME/venv"
KAFKA_VERSION=4.4.0   # keep in step with deploy/kafka/pom.xml
RIVVEN_VERSION=0.0.22
CHDB_VERSION=26.9.0
AIOSMTPD_VERSION=1.4.6
AIOSMTPD_DEPS="atpublic==9.0.0 attrs==26.1.0"

mkdir -p "$TOOLS"
log() { echo "[install] $*" >&2; }

installed_version() { # <binary> -> version recorded at install time
  local marker="$TOOLS/.$1.version"
  [ -x "$TOOLS/bin/$1" ] && [ -f "$marker" ] && cat "$marker" || true
}

cargo_install() { # <crate> <version> <binary> [extra cargo args...]
  local crate=$1 version=$2 bin=$3; shift 3
  if [ "$(installed_version "$bin")" = "$version" ]; then
    log "$crate $version present"
    return
  fi
  log "building $crate $version (cold build takes several minutes)"
  cargo install --locked --root "$TOOLS" "$crate" --version "$version" "$@"
  echo "$version" > "$TOOLS/.$bin.version"
}

want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    python3 -m venv "$VENV"
  fi
}

pip_has() { # <distribution> <version>: is exactly that version installed in $VENV?
  "$VENV/bin/python" -c "import importlib.metadata as m,sys; sys.exit(m.version('$1')!='$2')" 2>/dev/null
}

if want kafka; then
  KAFKA_DIR="$TOOLS/kafka-$KAFKA_VERSION"
  if [ -f "$KAFKA_DIR/.complete" ]; then
    log "kafka $KAFKA_VERSION present"
  else
    for tool in java mvn; do
      command -v "$tool" >/dev/null || { log "kafka needs $tool (Java 17+ and Maven): apt-get install openjdk-17-jre-headless maven"; exit 1; }
    done
    log "resolving kafka $KAFKA_VERSION from Maven Central into $KAFKA_DIR/libs"
    rm -rf "$KAFKA_DIR"
    mvn -B -q --no-transfer-progress -Dstyle.color=never -f "$ROOT/deploy/kafka/pom.xml" dependency:copy-dependencies -DoutputDirectory="$KAFKA_DIR/libs"
    [ -f "$KAFKA_DIR/libs/kafka_2.13-$KAFKA_VERSION.jar" ] || { log "kafka_2.13-$KAFKA_VERSION.jar missing after mvn: deploy/kafka/pom.xml and KAFKA_VERSION disagree"; exit 1; }
    touch "$KAFKA_DIR/.complete"
  fi
fi
if want schema; then
  cargo_install rivven-schema "$RIVVEN_VERSION" rivven-schema --no-default-features --features server,avro,cli
fi
if want clickhouse; then
  ensure_venv
  if pip_has chdb-core "$CHDB_VERSION"; then
    log "chdb-core $CHDB_VERSION present"
  else
    log "installing chdb-core $CHDB_VERSION (about 560 MB)"
    "$VENV/bin/pip" install --quiet --no-deps "chdb-core==$CHDB_VERSION"
  fi
fi
if want peers; then
  ensure_venv
  if pip_has aiosmtpd "$AIOSMTPD_VERSION"; then
    log "aiosmtpd $AIOSMTPD_VERSION present"
  else
    log "installing aiosmtpd $AIOSMTPD_VERSION"
    # shellcheck disable=SC2086 # AIOSMTPD_DEPS is a list of requirements
    "$VENV/bin/pip" install --quiet "aiosmtpd==$AIOSMTPD_VERSION" $AIOSMTPD_DEPS
  fi
fi
log "done"
