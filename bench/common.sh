# Shared by the bench/*.sh scripts (sourced, after `set -euo pipefail` and `cd` to the checkout).
# `bench_setup NAME` reads $backend (sqlite or postgres) and $pg_url, builds the release binary
# ($bin), makes a work directory ($work) and the database ($db_url): a SQLite file in $work, or a
# fresh PostgreSQL database tandem_bench_NAME on the server at $pg_url. On exit the server whose
# pid a script put in $server_pid is stopped, the database dropped and $work removed.
# BENCH_BIN=path runs that binary instead of building one (before/after comparisons).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tandem-target}"
server_pid=""

bench_setup() {
  bench_db="tandem_bench_$1"
  if [ -n "${BENCH_BIN:-}" ]; then
    bin="$BENCH_BIN"
  else
    cargo build --release --quiet
    bin="$CARGO_TARGET_DIR/release/tandem"
  fi
  work="$(mktemp -d)"
  trap bench_cleanup EXIT
  case "$backend" in
    sqlite) db_url="sqlite://$work/bench.db" ;;
    postgres)
      psql "$pg_url" -qc "DROP DATABASE IF EXISTS $bench_db WITH (FORCE)" >/dev/null
      psql "$pg_url" -qc "CREATE DATABASE $bench_db" >/dev/null
      db_url="${pg_url%/*}/$bench_db" ;;
    *) echo "backend must be sqlite or postgres" >&2; exit 2 ;;
  esac
}

bench_cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  fi
  if [ "$backend" = postgres ]; then
    psql "$pg_url" -qc "DROP DATABASE IF EXISTS $bench_db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}

# `bench_serve`: serves $bin on $db_url at 127.0.0.1:$port (its log in $work/server.log, $TANDEM_LOG
# or warn,tandem=info), waits until it answers, and sets $server_pid, $base and $token (the first
# admin key, which a fresh database's server prints once).
bench_serve() {
  TANDEM_SECRET_KEY="$(head -c 32 /dev/urandom | base64)" TANDEM_LOG="${TANDEM_LOG:-warn,tandem=info}" \
    "$bin" serve --database-url "$db_url" --bind "127.0.0.1:$port" 2>"$work/server.log" &
  server_pid=$!
  base="http://127.0.0.1:$port"
  token=""
  for _ in $(seq 1 100); do
    token="$(grep -o 'tdm_[A-Za-z0-9]*' "$work/server.log" 2>/dev/null | head -1 || true)"
    [ -n "$token" ] && curl -sf "$base/healthz" >/dev/null && break
    sleep 0.2
  done
  [ -n "$token" ] || { echo "the server did not start:"; cat "$work/server.log"; exit 1; } >&2
}
