#!/usr/bin/env bash
# Retention under load: does the `prune` job slow webhook ingest down? Serves a release build on a
# fresh database, fills it with webhook receipts (`tandem bench-ingest`'s max-throughput phase,
# every receipt applied: a deal, an attribution and events each), ages them past the receipt
# retention (their received_at moved 40 days back, by SQL), then measures the 1,000 webhooks/s
# phase twice: alone, and while `runJob(prune)` deletes the aged receipts. Usage:
#   bench/prune.sh sqlite | postgres [URL]
# BENCH_FILL_SECS (default 20) sets the fill phase, BENCH_PHASE_SECS (default 5) the two
# measured ones. Results go to bench/results/prune-<backend>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-sqlite}"
pg_url="${2:-postgres://postgres@127.0.0.1:5432/postgres}"
port="${BENCH_PORT:-18185}"
fill="${BENCH_FILL_SECS:-20}"
phase="${BENCH_PHASE_SECS:-5}"
source bench/common.sh
bench_setup prune

bench_serve

sql() {
  case "$backend" in
    sqlite) sqlite3 -cmd ".timeout 60000" "$work/bench.db" "$1" ;;
    postgres) psql "$db_url" -Atqc "$1" ;;
  esac
}

mkdir -p bench/results
out="bench/results/prune-$backend.txt"
{
  echo "# prune under load, $backend, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# machine: $(nproc) cores ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "## fill: ${fill}s of closed-loop webhooks"
  "$bin" bench-ingest --url "$base" --token "$token" --max-secs "$fill" --rate-secs 0 --burst-secs 0
  case "$backend" in
    sqlite) sql "UPDATE webhook_receipts SET received_at = \
      strftime('%Y-%m-%dT%H:%M:%f', received_at, '-40 days') || '+00:00'" ;;
    postgres) sql "UPDATE webhook_receipts SET received_at = received_at - interval '40 days'"
      sql "VACUUM ANALYZE webhook_receipts" ;;
  esac
  echo "# receipts aged past the 30-day retention: $(sql "SELECT COUNT(*) FROM webhook_receipts")"
  echo "## 1,000 webhooks/s for ${phase}s, alone"
  "$bin" bench-ingest --url "$base" --token "$token" --max-secs 0 --rate-secs "$phase" --burst-secs 0
  echo "## 1,000 webhooks/s for ${phase}s while prune runs (started with the phase)"
  started=$(date +%s.%N)
  curl -sf -H "Authorization: Bearer $token" -H 'content-type: application/json' "$base/graphql" \
    -d '{"query":"mutation { runJob(input: {name: \"prune\"}) { jobRun { status stats } } }"}' \
    >"$work/prune.json" && echo "$(date +%s.%N)" >"$work/prune.end" &
  prune_pid=$!
  "$bin" bench-ingest --url "$base" --token "$token" --max-secs 0 --rate-secs "$phase" --burst-secs 0
  wait "$prune_pid"
  echo "# prune: $(cat "$work/prune.json")"
  echo "# prune took $(awk "BEGIN {printf \"%.1f\", $(cat "$work/prune.end") - $started}") s"
  echo "# receipts left: $(sql "SELECT COUNT(*) FROM webhook_receipts")"
  echo "# WARN/ERROR lines in the server log: $(grep -cE 'WARN|ERROR' "$work/server.log" || true)"
} | tee "$out"
