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
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tandem-target}"

cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/tandem"
work="$(mktemp -d)"
cleanup() {
  if [ "$backend" = postgres ]; then
    psql "$pg_url" -qc "DROP DATABASE IF EXISTS tandem_bench_reconcile WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

case "$backend" in
  sqlite) db_url="sqlite://$work/bench.db" ;;
  postgres)
    psql "$pg_url" -qc "DROP DATABASE IF EXISTS tandem_bench_reconcile WITH (FORCE)" >/dev/null
    psql "$pg_url" -qc "CREATE DATABASE tandem_bench_reconcile" >/dev/null
    db_url="${pg_url%/*}/tandem_bench_reconcile" ;;
  *) echo "backend must be sqlite or postgres" >&2; exit 2 ;;
esac

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
