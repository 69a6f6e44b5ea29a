#!/usr/bin/env bash
# Webhook ingest benchmark: serves a release build on a fresh database and runs
# `tandem bench-ingest` against it (signed STANDARD webhooks with distinct ids: a closed-loop
# max-throughput phase, 1,000/s for latency, a 2,000/s burst and the time the apply worker
# needs to empty the inbox). Usage:
#   bench/ingest.sh sqlite            # SQLite file in a temporary directory
#   bench/ingest.sh postgres [URL]    # a fresh database on the server at URL (dropped after)
# Results go to bench/results/ingest-<backend>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-sqlite}"
pg_url="${2:-postgres://postgres@127.0.0.1:5432/postgres}"
port="${BENCH_PORT:-18182}"
source bench/common.sh
bench_setup ingest
case "$backend" in
  sqlite) durability="SQLite WAL, synchronous=FULL (fsync on every commit)" ;;
  postgres) durability="PostgreSQL $(psql "$pg_url" -Atc 'SHOW server_version'), synchronous_commit=$(psql "$pg_url" -Atc 'SHOW synchronous_commit'), fsync=$(psql "$pg_url" -Atc 'SHOW fsync')" ;;
esac

bench_serve

mkdir -p bench/results
out="bench/results/ingest-$backend.txt"
{
  echo "# webhook ingest benchmark, $backend, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# machine: $(nproc) cores ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "# durability: $durability"
  echo "# load generator: tandem bench-ingest on the same cores as the server"
  "$bin" bench-ingest --url "http://127.0.0.1:$port" --token "$token" "${@:3}"
  echo "# server RSS after the run: $(( $(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status") / 1024 )) MiB"
} | tee "$out"
