#!/usr/bin/env bash
# Instructions per dashboard request, counted by valgrind's callgrind: deterministic where wall-clock
# figures on a shared VM swing by ±30 % from run to run, so it is the measure to compare builds
# with. Seeds the dashboard data set (as bench/dashboard.sh does), serves a release build under
# callgrind, sends 20 warm-up requests, then counts N requests (default 100) one at a time.
#   bench/instructions.sh [N]        # needs valgrind (apt-get install -y valgrind)
# Prints instructions per request; the profile is left in $TMPDIR for callgrind_annotate when
# BENCH_KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100}"
port="${BENCH_PORT:-18383}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tandem-target}"
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install -y valgrind" >&2; exit 1; }

cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/tandem"
work="$(mktemp -d)"
vg_pid=""
cleanup() {
  [ -n "$vg_pid" ] && kill "$vg_pid" 2>/dev/null && wait "$vg_pid" 2>/dev/null || true
  [ "${BENCH_KEEP:-0}" = 1 ] && echo "profile kept in $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

db_url="sqlite://$work/bench.db"
"$bin" bench-seed --database-url "$db_url" --partners 10000 --referrals 200000 > "$work/seed.json"
TANDEM_SECRET_KEY="$(head -c 32 /dev/urandom | base64)" TANDEM_LOG=warn \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.out" \
  "$bin" serve --database-url "$db_url" --bind "127.0.0.1:$port" 2>"$work/valgrind.log" &
vg_pid=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.5; done

python3 - "$n" "$port" "$work/seed.json" "$vg_pid" <<'PY'
import http.client, json, subprocess, sys
n, port, seed_path, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
seed = json.load(open(seed_path))
query = ('query Dashboard($id: ID!) { partner(id: $id) { id name status referralCode '
         'referrals(first: 50) { totalCount pageInfo { hasNextPage endCursor } edges { node { id '
         'status companyName companyDomain submittedAt deal { id name amount currency status '
         'closedAt attributionMethod } } } } } }')
body = json.dumps({"query": query, "variables": {"id": seed["partner_id"]}})
headers = {"Authorization": "Bearer " + seed["partner_token"], "content-type": "application/json"}
conn = http.client.HTTPConnection("127.0.0.1", port)
def send(k):
    for _ in range(k):
        conn.request("POST", "/graphql", body, headers)
        data = conn.getresponse().read()
        assert b'"errors"' not in data, data[:300]
send(20)
subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
send(n)
subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
PY
sleep 1
total=$(cat "$work"/cg.out* | awk '/^totals:/ { if ($2 > m) m = $2 } END { print m + 0 }')
[ "$total" -gt 0 ] || { echo "callgrind collected nothing" >&2; exit 1; }
echo "instructions per dashboard request: $((total / n)) (callgrind, $n requests after 20 warm-up)"
