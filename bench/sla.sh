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
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tandem-target}"

cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/tandem"
work="$(mktemp -d)"
cleanup() {
  if [ "$backend" = postgres ]; then
    psql "$pg_url" -qc "DROP DATABASE IF EXISTS tandem_bench_sla WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

case "$backend" in
  sqlite) db_url="sqlite://$work/bench.db" ;;
  postgres)
    psql "$pg_url" -qc "DROP DATABASE IF EXISTS tandem_bench_sla WITH (FORCE)" >/dev/null
    psql "$pg_url" -qc "CREATE DATABASE tandem_bench_sla" >/dev/null
    db_url="${pg_url%/*}/tandem_bench_sla" ;;
  *) echo "backend must be sqlite or postgres" >&2; exit 2 ;;
esac

mkdir -p bench/results
out="bench/results/sla-$backend.jsonl"
TANDEM_LOG=warn "$bin" bench-sla --database-url "$db_url" \
  --settled "${BENCH_SETTLED:-1000000}" --pending "${BENCH_PENDING:-100000}" \
  --due "${BENCH_DUE:-10000}" --instances "${BENCH_INSTANCES:-2}" | tee -a "$out"
