#!/usr/bin/env bash
# Registration-sweep benchmark (DESIGN §12): seeds 1,000,000 referrals whose SLA is met, 100,000
# due tomorrow and 10,000 due a minute ago, then times the idle `lead-sla` and
# `expire-registrations` sweeps (nothing due: what each scheduled run costs) and two instances
# breaching the 10,000 due SLAs at once, checking one event per referral. Usage:
#   bench/sla.sh sqlite            # SQLite file in a temporary directory
#   bench/sla.sh postgres [URL]    # a fresh database on the server at URL (dropped after)
# BENCH_SETTLED / BENCH_PENDING / BENCH_DUE / BENCH_INSTANCES change the size.
# Results: bench/results/sla-<backend>.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-sqlite}"
pg_url="${2:-postgres://postgres@127.0.0.1:5432/postgres}"
source bench/common.sh
bench_setup sla

mkdir -p bench/results
out="bench/results/sla-$backend.jsonl"
TANDEM_LOG=warn "$bin" bench-sla --database-url "$db_url" \
  --settled "${BENCH_SETTLED:-1000000}" --pending "${BENCH_PENDING:-100000}" \
  --due "${BENCH_DUE:-10000}" --instances "${BENCH_INSTANCES:-2}" | tee -a "$out"
