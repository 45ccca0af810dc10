#!/usr/bin/env bash
# Where the slowest hundredth of small GETs comes from: the gateway and nginx `proxy_pass` in
# alternating turns on one rig, at a fixed rate (oha, 16 connections, latency corrected, as
# benches/versus.sh measures the added p99), each request's start and duration kept (oha's
# SQLite records). For each turn it prints p50/p90/p99/p99.9/max, and the slowest 1 % by when in
# its second they started (20 bins of 50 ms): a periodic cause (a once-a-second refresh, a timer)
# piles them into a few bins, the host's noise spreads them out. This found the Redis session
# view's once-a-second burst (docs/benchmarks.md, "Issue 24: the Redis session view").
#
#   benches/tails.sh [--store redis] [cookie|basic] [h1|h2] [TURNS] [RATE]
#   # default: embedded store, basic, h2, 3 turns of 12 s, 6300 req/s
set -euo pipefail
cd "$(dirname "$0")/.."
rig_args=()
if [ "${1:-}" = --store ]; then
    rig_args=(--store "$2")
    shift 2
fi
creds="${1:-basic}"
proto="${2:-h2}"
turns="${3:-3}"
rate="${4:-6300}"
case "$creds" in cookie | basic) ;; *) sed -n '11p' "$0" >&2; exit 2 ;; esac
case "$proto" in h1) h2=() ;; h2) h2=(--http2) ;; *) sed -n '11p' "$0" >&2; exit 2 ;; esac

. benches/hold.sh python3
if [ "$creds" = cookie ]; then
    headers=(-H "Cookie: $cookie")
else
    headers=(-H "Authorization: $basic" -H "User-Agent: $agent")
fi
echo "# tails: $creds over $proto at $rate req/s, ${rig_args[*]:-embedded store}, $turns turns of 12 s (the first 2 s left out)"
for turn in $(seq 1 "$turns"); do
    for peer in faspex-gate nginx; do
        if [ "$peer" = nginx ]; then p="$nginx_port"; else p="$port"; fi
        db="$work/$peer-$turn.db"
        "$oha" --no-tui --output-format json --latency-correction --insecure -z 12s -q "$rate" \
            -c 16 "${headers[@]}" "${h2[@]}" --db-url "$db" \
            "https://localhost:$p/aspera/faspex/small" >"$work/$peer-$turn.json"
        python3 - "$db" "$peer" "$turn" <<'PY'
import sqlite3, sys

db, peer, turn = sys.argv[1:]
rows = sqlite3.connect(db).execute(
    "SELECT coalesce(start_latency_correction, start), duration FROM oha "
    "WHERE coalesce(start_latency_correction, start) >= 2 AND status BETWEEN 200 AND 299"
).fetchall()
d = sorted(r[1] for r in rows)
n = len(d)
if n == 0:
    sys.exit(f"{peer}: no 2xx answer was recorded")
p = lambda q: d[min(n - 1, int(q * n))] * 1000
slow = d[int(0.99 * n)]
bins = [0] * 20
for start, dur in rows:
    if dur >= slow:
        bins[int((start % 1.0) * 20)] += 1
print(f"turn {turn} {peer:<11} n={n:<6} p50 {p(.5):6.3f}  p90 {p(.9):6.3f}  p99 {p(.99):6.3f}  "
      f"p99.9 {p(.999):6.3f}  max {d[-1] * 1000:7.3f} ms")
print(f"turn {turn} {peer:<11} slowest 1 % by start within its second (50 ms bins): {bins}")
PY
    done
done
