#!/usr/bin/env bash
# Scale-out benchmark: several release instances on one PostgreSQL database, signed webhooks
# spread over them by `tandem bench-scaleout` (a load generator that fails over like a load
# balancer), one instance SIGKILLed half-way, then the checks: every acknowledged webhook applied
# once, one accrual per deal after concurrent reconciles, every subscribed event delivered with
# a valid signature. Usage:
#   bench/scaleout.sh [URL]     # PostgreSQL server (default postgres://postgres@127.0.0.1:5432/postgres)
# Environment: BENCH_INSTANCES (3), BENCH_RATE (webhooks/s over all instances, 1000),
# BENCH_SECS (30), BENCH_PORT (first instance's port, 18300).
# Results go to bench/results/scaleout-postgres.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=postgres
pg_url="${1:-postgres://postgres@127.0.0.1:5432/postgres}"
instances="${BENCH_INSTANCES:-3}"
rate="${BENCH_RATE:-1000}"
secs="${BENCH_SECS:-30}"
base_port="${BENCH_PORT:-18300}"
source bench/common.sh
bench_setup scaleout
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; bench_cleanup' EXIT

# What every instance must share: the database, the secret key and the public URL (here the
# first instance stands in for the load balancer's address).
export TANDEM_DATABASE_URL="$db_url"
export TANDEM_SECRET_KEY="$(head -c 32 /dev/urandom | base64)"
export TANDEM_PUBLIC_URL="http://127.0.0.1:$base_port"
export TANDEM_LOG=warn,tandem=info
# The receiver runs on this machine; claims and leases of the killed instance are taken over
# after these (defaults: 60 s and 300 s).
export TANDEM_WEBHOOK_ALLOW_PRIVATE_TARGETS=true
export TANDEM_WEBHOOK_CLAIM_SECS=10
export TANDEM_JOB_LEASE_SECS=15

"$bin" migrate 2>/dev/null
token="$("$bin" keys create --role admin --name scale-out-bench)"
urls=()
for i in $(seq 1 "$instances"); do
  port=$((base_port + i - 1))
  "$bin" serve --bind "127.0.0.1:$port" 2>"$work/instance-$i.log" &
  pids+=("$!")
  urls+=("http://127.0.0.1:$port")
done
for url in "${urls[@]}"; do
  for _ in $(seq 1 100); do
    curl -sf "$url/healthz" >/dev/null && break
    sleep 0.2
  done
  curl -sf "$url/healthz" >/dev/null || { echo "$url did not start:"; cat "$work"/instance-*.log; exit 1; } >&2
done

mkdir -p bench/results
out="bench/results/scaleout-postgres.txt"
victim="${pids[1]:-${pids[0]}}"
status=0
{
  echo "# scale-out benchmark, $instances instances on one PostgreSQL, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# machine: $(nproc) cores ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "# PostgreSQL $(psql "$pg_url" -Atc 'SHOW server_version'), synchronous_commit=$(psql "$pg_url" -Atc 'SHOW synchronous_commit'); instances, load generator and database share the cores"
  echo "# killed: instance 2 (pid $victim), SIGKILL half-way through sending"
  wal_start="$(psql "$pg_url" -Atc 'SELECT pg_current_wal_lsn()')"
  "$bin" bench-scaleout --token "$token" --rate "$rate" --secs "$secs" --kill-pid "$victim" \
    $(printf -- '--url %s ' "${urls[@]}") 2>&1 || status=$?
  echo "# WAL written on the server during the run (ingest, apply, reconcile, deliveries): $(psql "$pg_url" -Atc "SELECT pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), '$wal_start'))"); database size after: $(psql "$pg_url" -Atc "SELECT pg_size_pretty(pg_database_size('$bench_db'))")"
  for i in $(seq 1 "$instances"); do
    pid="${pids[$((i - 1))]}"
    if kill -0 "$pid" 2>/dev/null; then
      echo "# instance $i RSS at the end: $(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024 )) MiB; WARN/ERROR lines in its log: $(grep -cE 'WARN|ERROR' "$work/instance-$i.log" || true)"
    else
      echo "# instance $i: killed; WARN/ERROR lines in its log: $(grep -cE 'WARN|ERROR' "$work/instance-$i.log" || true)"
    fi
  done
  exit "$status"
} | tee "$out"
