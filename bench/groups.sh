#!/usr/bin/env bash
# Partner-group benchmark (DESIGN §13): seeds 10,000 partners with 1,000,000 reconciled deals
# and certifications, creates Silver/Gold/Platinum, then times creating the default group, the
# first `evaluate-groups` (promotions checked against the seeded data), an idle evaluation, a
# review with demotions, and `nextGroupProgress`. Usage:
#   bench/groups.sh sqlite            # SQLite file in a temporary directory
#   bench/groups.sh postgres [URL]    # a fresh database on the server at URL (dropped after)
# BENCH_PARTNERS / BENCH_DEALS change the size.
# Results: bench/results/groups-<backend>.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-sqlite}"
pg_url="${2:-postgres://postgres@127.0.0.1:5432/postgres}"
source bench/common.sh
bench_setup groups

mkdir -p bench/results
out="bench/results/groups-$backend.jsonl"
TANDEM_LOG=warn "$bin" bench-groups --database-url "$db_url" \
  --partners "${BENCH_PARTNERS:-10000}" --deals "${BENCH_DEALS:-1000000}" | tee -a "$out"
