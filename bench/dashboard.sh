#!/usr/bin/env bash
# Partner-dashboard benchmark: seeds 10,000 partners and 200,000 referrals (a deal attributed to
# every fifth), serves a release build, and drives the dashboard query (a partner with its 50
# latest referrals and their deals) with wrk. Usage:
#   bench/dashboard.sh sqlite            # SQLite file in a temporary directory
#   bench/dashboard.sh postgres [URL]    # a fresh database on the server at URL (dropped after)
# Needs wrk (apt-get install -y wrk). Results go to bench/results/dashboard-<backend>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-sqlite}"
pg_url="${2:-postgres://postgres@127.0.0.1:5432/postgres}"
duration="${BENCH_DURATION:-20s}"
connections="${BENCH_CONNECTIONS:-32}"
port="${BENCH_PORT:-18181}"
source bench/common.sh
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
bench_setup dashboard

echo "seeding $backend ..."
seed_start=$(date +%s)
seed_json="$("$bin" bench-seed --database-url "$db_url" --partners 10000 --referrals 200000)"
seed_secs=$(( $(date +%s) - seed_start ))
partner_id="$(echo "$seed_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partner_id"])')"
token="$(echo "$seed_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partner_token"])')"

TANDEM_SECRET_KEY="$(head -c 32 /dev/urandom | base64)" TANDEM_LOG=warn \
  "$bin" serve --database-url "$db_url" --bind "127.0.0.1:$port" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
sleep 2
idle_rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")

query='query Dashboard($id: ID!) { partner(id: $id) { id name status referralCode referrals(first: 50) { totalCount pageInfo { hasNextPage endCursor } edges { node { id status companyName companyDomain submittedAt deal { id name amount currency status closedAt attributionMethod } } } } } }'
body="$(python3 -c 'import json,sys; print(json.dumps({"query": sys.argv[1], "variables": {"id": sys.argv[2]}}))' "$query" "$partner_id")"
check="$(curl -s -H "Authorization: Bearer $token" -H 'content-type: application/json' "http://127.0.0.1:$port/graphql" -d "$body")"
echo "$check" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert "errors" not in d, d; n=len(d["data"]["partner"]["referrals"]["edges"]); assert n == 50, n' \
  || { echo "the dashboard query failed: $check" >&2; exit 1; }

cat > "$work/dashboard.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
wrk.body = [[$body]]
LUA
mkdir -p bench/results
out="bench/results/dashboard-$backend.txt"
{
  echo "# dashboard benchmark, $backend, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "# seed: 10000 partners, 200000 referrals, 40000 deals in ${seed_secs}s"
  echo "# idle RSS before load: $((idle_rss_kb / 1024)) MiB"
  wrk -t2 -c"$connections" -d"$duration" --latency -s "$work/dashboard.lua" "http://127.0.0.1:$port/graphql"
  echo "# RSS after load: $(( $(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status") / 1024 )) MiB"
} | tee "$out"
