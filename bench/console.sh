#!/usr/bin/env bash
# Console overview benchmark: seeds the dashboard benchmark's data (10,000 partners, 200,000
# referrals, 40,000 deals of which 4,000 won), reconciles it (so the KPIs and charts have
# commission and revenue to aggregate), signs in with the admin key and drives
# GET /console/overview (all-time KPI cards, 12 months of revenue and commission, funnel,
# leaderboard) with wrk over one connection: the latencies are the server's time per page on
# loopback. Then the partner dashboard with the partner key. Usage:
#   bench/console.sh sqlite | postgres [URL]
# Needs wrk (apt-get install -y wrk). Results go to bench/results/console-<backend>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-sqlite}"
pg_url="${2:-postgres://postgres@127.0.0.1:5432/postgres}"
duration="${BENCH_DURATION:-15s}"
port="${BENCH_PORT:-18183}"
source bench/common.sh
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
bench_setup console

echo "seeding $backend ..."
seed_json="$("$bin" bench-seed --database-url "$db_url" --partners 10000 --referrals 200000)"
admin="$(echo "$seed_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_token"])')"
partner="$(echo "$seed_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partner_token"])')"

TANDEM_SECRET_KEY="$(head -c 32 /dev/urandom | base64)" TANDEM_LOG=warn \
  "$bin" serve --database-url "$db_url" --bind "127.0.0.1:$port" 2>"$work/server.log" &
server_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 50); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.2; done

echo "reconciling ..."
curl -sf -H "Authorization: Bearer $admin" -H 'content-type: application/json' "$base/graphql" \
  -d '{"query":"mutation { runJob(input: {name: \"reconcile\"}) { jobRun { status stats } } }"}' >"$work/reconcile.json"
grep -q SUCCEEDED "$work/reconcile.json" || { cat "$work/reconcile.json" >&2; exit 1; }
if [ "$backend" = postgres ] && [ "${BENCH_VACUUM:-1}" = 1 ]; then
  # What autovacuum does within a minute of the reconcile's 100,000 rows (it is off on this
  # project's test machine): planner statistics and the visibility map, without which
  # PostgreSQL counts through the table instead of an index. BENCH_VACUUM=0 measures without.
  psql "$db_url" -qc "VACUUM ANALYZE"
fi

session() {
  curl -s -o /dev/null -D - -d "token=$1" "$base/console/login" \
    | awk -F'[=;]' 'tolower($1) ~ /^set-cookie: tandem_session/ {print $2}'
}
mkdir -p bench/results
out="bench/results/console-$backend.txt"
{
  echo "# console benchmark, $backend, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "# data: 10000 partners, 200000 referrals, 40000 deals (4000 won), reconciled"
  echo "# reconcile: $(cat "$work/reconcile.json")"
  [ "$backend" = postgres ] && echo "# VACUUM ANALYZE after the reconcile: ${BENCH_VACUUM:-1}"
  for who in admin partner; do
    token="$admin"; [ "$who" = partner ] && token="$partner"
    cookie="$(session "$token")"
    [ -n "$cookie" ] || { echo "sign-in failed" >&2; exit 1; }
    status="$(curl -s -o "$work/page.html" -w '%{http_code}' -H "Cookie: tandem_session=$cookie" "$base/console/overview")"
    [ "$status" = 200 ] && grep -q 'data-kpi="wonRevenue"' "$work/page.html" \
      || { echo "the overview failed ($status)" >&2; exit 1; }
    echo "## GET /console/overview as $who ($(grep -o 'data-kpi="wonRevenue" value="[^"]*"' "$work/page.html"))"
    cat > "$work/page.lua" <<LUA
wrk.method = "GET"
wrk.headers["Cookie"] = "tandem_session=$cookie"
LUA
    wrk -t1 -c1 -d"$duration" --latency -s "$work/page.lua" "$base/console/overview"
    # The page right after a change: the partner submits a referral before each page, so the
    # kept KPI answers (KpiCache) are of no use and every page computes them.
    echo "## GET /console/overview as $who, each right after a write (20 pages)"
    for i in $(seq 1 20); do
      curl -sf -o /dev/null -H "Authorization: Bearer $partner" -H 'content-type: application/json' \
        "$base/graphql" -d "{\"query\":\"mutation { submitReferral(input: {companyName: \\\"Cold $who $i\\\", companyDomain: \\\"cold-$who-$i.example\\\"}) { referral { id } } }\"}"
      curl -s -o /dev/null -w '%{time_total}\n' -H "Cookie: tandem_session=$cookie" "$base/console/overview"
    done | sort -n | awk '{a[NR]=$1} END {printf "median %.1f ms, slowest %.1f ms\n", a[int((NR+1)/2)]*1000, a[NR]*1000}'
  done
} | tee "$out"
