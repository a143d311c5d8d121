#!/usr/bin/env bash
# The local stack: Apache Kafka (one KRaft node, deploy/kafka/), rivven-schema (Schema Registry),
# ClickHouse (chdb launcher),
# and the channel peers (deploy/peers/peers.py: SMTP server + webhook/push/SMS provider stand-ins).
# All on 127.0.0.1, started in the background, stopped by PID.
#
#   deploy/scripts/stack.sh start [service...]   install (if missing) and start every service (or the
#                                                named ones: kafka, schema-registry, clickhouse, peers),
#                                                wait until ready
#   deploy/scripts/stack.sh stop [service...]    stop them (SIGTERM, then SIGKILL after 10 s)
#   deploy/scripts/stack.sh reset                stop everything, delete the broker's log (topics,
#                                                offsets, transactions), start everything again empty
#   deploy/scripts/stack.sh status   show what runs
#
# Kafka keeps its log on disk ($TOUCHPOINT_HOME/run/kafka/data): a stop/start (or a kill -9 and start)
# keeps every topic, as a real broker restart does; `reset` is what starts from nothing.
#
# Ports (override with the variables): Kafka 19092 (TOUCHPOINT_KAFKA_PORT) and its KRaft controller
# 19093 (TOUCHPOINT_KAFKA_CONTROLLER_PORT), ClickHouse HTTP 18123
# (TOUCHPOINT_CLICKHOUSE_PORT), Schema Registry 18081 (TOUCHPOINT_SCHEMA_REGISTRY_PORT), peers' SMTP 18025
# (TOUCHPOINT_SMTP_PORT) and HTTP 18090 (TOUCHPOINT_PEERS_HTTP_PORT).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TOUCHPOINT_HOME="${TOUCHPOINT_HOME:-$HOME/.touchpoint}"
BIN="$TOUCHPOINT_HOME/tools/bin"
VENV="$TOUCHPOINT_HOME/venv"
RUN="$TOUCHPOINT_HOME/run"
KAFKA_PORT="${TOUCHPOINT_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${TOUCHPOINT_KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_VERSION=4.4.0   # keep in step with deploy/kafka/pom.xml and install-services.sh
KAFKA_LIBS="$TOUCHPOINT_HOME/tools/kafka-$KAFKA_VERSION/libs"
KAFKA_RUN="$RUN/kafka"
# A bounded heap: the broker shares 2 cores and the memory with the pipeline, ClickHouse and the tests.
KAFKA_HEAP="${TOUCHPOINT_KAFKA_HEAP:--Xms256m -Xmx1g}"
CLICKHOUSE_PORT="${TOUCHPOINT_CLICKHOUSE_PORT:-18123}"
CLICKHOUSE_TCP_PORT="${TOUCHPOINT_CLICKHOUSE_TCP_PORT:-19000}"
REGISTRY_PORT="${TOUCHPOINT_SCHEMA_REGISTRY_PORT:-18081}"
SMTP_PORT="${TOUCHPOINT_SMTP_PORT:-18025}"
PEERS_HTTP_PORT="${TOUCHPOINT_PEERS_HTTP_PORT:-18090}"

log() { echo "[stack] $*" >&2; }

pid_of() { # <name> -> pid if running
  local f="$RUN/$1.pid"
  [ -f "$f" ] || return 1
  local pid; pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

wait_until() { # <name> <seconds> <command...>
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! pid_of "$name" >/dev/null; then
      log "$name exited during start-up; last lines of $RUN/$name.log:"; tail -20 "$RUN/$name.log" >&2; return 1
    fi
    sleep 0.1
  done
  log "$name not ready after ${secs}s; last lines of $RUN/$name.log:"; tail -20 "$RUN/$name.log" >&2
  return 1
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_one() { # <name> <command...>
  local name=$1; shift
  if pid_of "$name" >/dev/null; then log "$name already running (pid $(pid_of "$name"))"; return 0; fi
  log "starting $name"
  setsid "$@" >"$RUN/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
}

# java with the broker's classpath and logging (an array, so that setsid can run it)
# shellcheck disable=SC2206 # KAFKA_HEAP is a list of JVM options
KAFKA_JAVA=(java $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$ROOT/deploy/kafka/log4j2.xml" -cp "$KAFKA_LIBS/*")

kafka_prepare() { # the node's config, and its storage formatted once (a formatted log is kept)
  mkdir -p "$KAFKA_RUN"
  {
    cat "$ROOT/deploy/kafka/server.properties"
    echo
    echo "# appended by stack.sh"
    echo "listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT"
    echo "controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT"
    echo "log.dirs=$KAFKA_RUN/data"
  } > "$KAFKA_RUN/server.properties"
  if [ ! -f "$KAFKA_RUN/data/meta.properties" ]; then
    # A cluster id is 16 random bytes in URL-safe base64 without padding (what `random-uuid` prints).
    local cluster_id
    cluster_id=$(python3 -c 'import base64,os; print(base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("="))')
    log "formatting kafka storage $KAFKA_RUN/data (cluster $cluster_id)"
    "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format --standalone -t "$cluster_id" \
      -c "$KAFKA_RUN/server.properties" >"$RUN/kafka-format.log" 2>&1 \
      || { log "kafka storage format failed:"; tail -20 "$RUN/kafka-format.log" >&2; return 1; }
  fi
}

# Ready when the port answers and the node logged that it started (broker and controller both up:
# it then answers metadata). The log is new at each start (start_one truncates it).
kafka_ready() { tcp_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$RUN/kafka.log"; }

launch() { # <service>: start it in the background
  case "$1" in
    kafka) pid_of kafka >/dev/null || kafka_prepare
           start_one kafka "${KAFKA_JAVA[@]}" kafka.Kafka "$KAFKA_RUN/server.properties" ;;
    schema-registry) start_one schema-registry "$BIN/rivven-schema" serve --host 127.0.0.1 --port "$REGISTRY_PORT" ;;
    clickhouse) start_one clickhouse "$VENV/bin/python" "$ROOT/deploy/clickhouse/launcher.py" \
                  --data-dir "$RUN/clickhouse" --http-port "$CLICKHOUSE_PORT" --tcp-port "$CLICKHOUSE_TCP_PORT" ;;
    peers) start_one peers "$VENV/bin/python" "$ROOT/deploy/peers/peers.py" \
             --smtp-port "$SMTP_PORT" --http-port "$PEERS_HTTP_PORT" ;;
    *) log "unknown service $1 (kafka, schema-registry, clickhouse, peers)"; return 2 ;;
  esac
}

ready() { # <service>: wait until it answers
  case "$1" in
    kafka) wait_until kafka 90 kafka_ready ;;
    schema-registry) wait_until schema-registry 60 curl -fsS "http://127.0.0.1:$REGISTRY_PORT/subjects" ;;
    clickhouse) wait_until clickhouse 120 curl -fsS "http://127.0.0.1:$CLICKHOUSE_PORT/ping" ;;
    peers) wait_until peers 30 curl -fsS "http://127.0.0.1:$PEERS_HTTP_PORT/_health" ;;
  esac
}

SERVICES=(kafka schema-registry clickhouse peers)

start() { # [service...]: all by default
  "$HERE/install-services.sh"
  mkdir -p "$RUN"
  local names=("$@"); [ ${#names[@]} -gt 0 ] || names=("${SERVICES[@]}")
  for name in "${names[@]}"; do launch "$name"; done
  for name in "${names[@]}"; do ready "$name"; done
  log "ready: kafka 127.0.0.1:$KAFKA_PORT, schema registry http://127.0.0.1:$REGISTRY_PORT, clickhouse http://127.0.0.1:$CLICKHOUSE_PORT, peers smtp://127.0.0.1:$SMTP_PORT http://127.0.0.1:$PEERS_HTTP_PORT"
}

stop_one() {
  local name=$1 pid
  if pid=$(pid_of "$name"); then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/$name.pid"
}

stop() { # [service...]: all by default
  local names=("$@"); [ ${#names[@]} -gt 0 ] || names=(peers clickhouse schema-registry kafka)
  for name in "${names[@]}"; do stop_one "$name"; done
}

status() {
  for name in kafka schema-registry clickhouse peers; do
    if pid=$(pid_of "$name"); then echo "$name: running (pid $pid)"; else echo "$name: stopped"; fi
  done
}

reset() { # everything stopped, the broker's log deleted, everything started again
  stop
  log "deleting the broker's log ($KAFKA_RUN)"
  rm -rf "$KAFKA_RUN"
  start
}

case "${1:-}" in
  start) shift; start "$@" ;;
  reset) reset ;;
  stop) shift; stop "$@" ;;
  restart) shift; stop "$@"; start "$@" ;;
  status) status ;;
  *) echo "usage: $0 start|stop|restart [service...] | reset | status" >&2; exit 2 ;;
esac
