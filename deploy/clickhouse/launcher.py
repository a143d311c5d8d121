#!/usr/bin/env python3
"""Serve a ClickHouse engine from the chdb-core wheel over HTTP, for local runs and tests.

chdb's one-shot query entry point runs the whole clickhouse-local program. Since ClickHouse 26.x,
clickhouse-local opens its HTTP/TCP listeners on `SYSTEM START LISTEN HTTP` when the config file in
its working directory sets `listen_host` and the ports; a query that never ends then keeps the
process (and the listener) alive. Data lives in --data-dir (MergeTree parts on disk), so a restart
keeps every table.

There is no authentication (every client is `default`): bind to 127.0.0.1 only.
Stop it with SIGTERM (deploy/scripts/stack.sh stop); committed parts are on disk.
"""
import argparse
import os
import sys

CONFIG = """<clickhouse>
    <listen_host>{host}</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <logger><level>warning</level><console>1</console></logger>
</clickhouse>
"""

# Keeps the process alive: one row per second, forever (system.numbers never ends).
KEEP_ALIVE = (
    "SYSTEM START LISTEN HTTP; "
    "SELECT sleepEachRow(1) FROM system.numbers "
    "SETTINGS max_block_size = 1, function_sleep_max_microseconds_per_block = 0"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=18123)
    parser.add_argument("--tcp-port", type=int, default=19000)
    args = parser.parse_args()

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("refusing to listen on a non-loopback address: this server has no authentication", file=sys.stderr)
        return 2

    data_dir = os.path.abspath(args.data_dir)
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, "config.xml"), "w", encoding="utf-8") as f:
        f.write(CONFIG.format(host=args.host, http_port=args.http_port, tcp_port=args.tcp_port))
    # clickhouse-local reads config.xml from its working directory.
    os.chdir(data_dir)

    import chdb._chdb as engine  # imported after chdir: the engine initializes on import

    print(f"clickhouse (chdb) serving http://{args.host}:{args.http_port} data={data_dir}", flush=True)
    # The keep-alive query's output format becomes the HTTP default format: TabSeparated, as on a
    # real server (with "Null", a plain `curl --data-binary "SELECT 1"` would print nothing).
    result = engine.query(KEEP_ALIVE, "TabSeparated", path=os.path.join(data_dir, "db"))
    # Only reached if the keep-alive query fails (e.g. the port is taken).
    message = result.error_message() if hasattr(result, "error_message") else str(result)
    print(f"clickhouse (chdb) stopped: {message}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
