#!/usr/bin/env bash
# Recurring-commission benchmark (DESIGN §11): seeds 1,000,000 paid invoices of 10,000 referred
# customers (1,000 partners, one program paying 10 % of invoices for 36 months, 10 % in EUR,
# 2 % partly refunded), then times a full reconciliation, an incremental one after 1 % of the
# invoices got a credit note, and the ingest of 20,000 Stripe invoice.paid events (verify,
# store in the inbox, apply and link). Each phase runs in its own process (its peak RSS is its
# own). On PostgreSQL, `VACUUM ANALYZE` runs after `seed` and after `touch`. Usage:
#   bench/billing.sh sqlite            # SQLite file in a temporary directory
#   bench/billing.sh postgres [URL]    # a fresh database on the server at URL (dropped after)
# BENCH_INVOICES / BENCH_CUSTOMERS / BENCH_EVENTS change the size.
# Results: bench/results/billing-<backend>.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-sqlite}"
pg_url="${2:-postgres://postgres@127.0.0.1:5432/postgres}"
invoices="${BENCH_INVOICES:-1000000}"
customers="${BENCH_CUSTOMERS:-10000}"
events="${BENCH_EVENTS:-20000}"
source bench/common.sh
bench_setup billing

mkdir -p bench/results
out="bench/results/billing-$backend.jsonl"
: > "$out"
for phase in seed full touch incremental ingest; do
  echo "== $phase" >&2
  TANDEM_LOG=warn "$bin" bench-billing "$phase" --database-url "$db_url" \
    --invoices "$invoices" --customers "$customers" --events "$events" | tee -a "$out"
  # PostgreSQL: statistics after each bulk step, as autovacuum would give them a while later
  # (the next phase's plans otherwise rest on the statistics of before the million rows).
  if [ "$backend" = postgres ] && { [ "$phase" = seed ] || [ "$phase" = touch ]; }; then
    psql "$db_url" -qc "VACUUM ANALYZE" >/dev/null
  fi
done
if [ "$backend" = sqlite ]; then
  echo "database size: $(du -sh "$work" | cut -f1)" >&2
fi
echo "results in $out" >&2
