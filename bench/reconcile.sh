#!/usr/bin/env bash
# Commission-engine benchmark: seeds 1,000,000 deals across 10,000 partners in 5 programs, then
# times a full reconciliation, an incremental one after 1 % of the deals changed, and the KPIs
# of every program. Each phase runs in its own process (its peak RSS is its own). Usage:
#   bench/reconcile.sh sqlite            # SQLite file in a temporary directory
#   bench/reconcile.sh postgres [URL]    # a fresh database on the server at URL (dropped after)
# BENCH_DEALS / BENCH_PARTNERS change the size. Results: bench/results/reconcile-<backend>.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-sqlite}"
pg_url="${2:-postgres://postgres@127.0.0.1:5432/postgres}"
deals="${BENCH_DEALS:-1000000}"
partners="${BENCH_PARTNERS:-10000}"
source bench/common.sh
bench_setup reconcile

mkdir -p bench/results
out="bench/results/reconcile-$backend.jsonl"
: > "$out"
for phase in seed full touch incremental kpis; do
  echo "== $phase" >&2
  TANDEM_LOG=warn "$bin" bench-reconcile "$phase" --database-url "$db_url" \
    --deals "$deals" --partners "$partners" | tee -a "$out"
done
if [ "$backend" = sqlite ]; then
  echo "database size: $(du -sh "$work" | cut -f1)" >&2
fi
echo "results in $out" >&2
