#!/usr/bin/env bash
# User-space instructions per small authenticated GET through faspex-gate, counted by valgrind's
# callgrind: a figure that repeats on a shared machine, where requests/s drift by a fifth from
# run to run. Use it to compare two builds; the nginx comparison is benches/versus.sh.
#
#   benches/instructions.sh [REQUESTS] [cookie|basic]   # default 10000 with the session cookie
#
# `basic` sends HTTP Basic credentials instead (the rig's Basic caller, with its User-Agent), each
# request a hit of the gateway's verification cache after the warm-up.
#
# It starts the benchmark's rig (`benches/versus.sh --hold`: upstream, slapd, gateway, nginx),
# restarts the rig's gateway under callgrind with the same configuration and state (the
# session survives the restart), sends 500 requests to warm up, zeroes the counters, sends
# REQUESTS more over 32 keep-alive TLS connections with oha, and divides. The kernel's share
# (socket calls) is not counted; the 32 TLS handshakes are, spread over the requests.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
credentials="${2:-cookie}"
case "$credentials" in cookie | basic) ;; *) echo "instructions: cookie or basic, not $credentials" >&2; exit 2 ;; esac

if ! command -v valgrind >/dev/null; then
    if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
fi

work="$(mktemp -d)"
setsid bash benches/versus.sh --hold >"$work/rig.log" 2>&1 &
rig=$!
vg=""
cleanup() {
    [ -n "$vg" ] && kill "$vg" 2>/dev/null
    kill -- -"$rig" 2>/dev/null || true
}
trap cleanup EXIT

for _ in $(seq 1 1200); do
    grep -q '^cookie:' "$work/rig.log" && break
    kill -0 "$rig" 2>/dev/null || { cat "$work/rig.log" >&2; exit 1; }
    sleep 1
done
holding="$(grep '^holding:' "$work/rig.log")" || { cat "$work/rig.log" >&2; exit 1; }
gateway_pid="$(sed -E 's/.*gateway pid ([0-9]+) .*/\1/' <<<"$holding")"
port="$(sed -E 's/.*gateway pid [0-9]+ https:\/\/localhost:([0-9]+) .*/\1/' <<<"$holding")"
cookie="$(grep '^cookie:' "$work/rig.log" | cut -d' ' -f2)"
# ("basic: Basic <base64> (with User-Agent: <agent>)")
basic_line="$(grep '^basic:' "$work/rig.log")"
basic="$(sed -E 's/^basic: (Basic [^ ]+) .*/\1/' <<<"$basic_line")"
agent="$(sed -E 's/.*User-Agent: ([^)]+)\).*/\1/' <<<"$basic_line")"
mapfile -d '' -t cmd <"/proc/$gateway_pid/cmdline"

kill "$gateway_pid"
# (it stays a zombie until the rig reaps it: wait for it to have exited, not to be gone)
while [ -e "/proc/$gateway_pid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$gateway_pid/status" 2>/dev/null; do
    sleep 0.2
done
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "${cmd[@]}" \
    >"$work/gateway.log" 2>&1 &
vg=$!
url="https://localhost:$port/aspera/faspex/small"
for _ in $(seq 1 120); do
    curl -sk -o /dev/null "https://localhost:$port/" && break
    sleep 1
done

oha="${OHA:-$(command -v oha || echo "${CARGO_TARGET_DIR:-target}/bench-tools/bin/oha")}"
if [ "$credentials" = basic ]; then
    headers=(-H "Authorization: $basic" -H "User-Agent: $agent")
else
    headers=(-H "Cookie: $cookie")
fi
load() {
    "$oha" -n "$1" -c 32 --no-tui --insecure "${headers[@]}" "$url"
}
load 500 >/dev/null
callgrind_control -z "$vg" >/dev/null
report="$(load "$n")"
callgrind_control -d "$vg" >/dev/null
grep -q "\[200\] $n responses" <<<"$report" || {
    echo "instructions: not every request was answered 200:" >&2
    echo "$report" >&2
    exit 1
}
dump="$(ls -t "$work"/callgrind.out.* | head -1)"
total="$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
echo "faspex-gate: $((total / n)) user-space instructions per small authenticated GET ($credentials, $n requests; $dump)"
echo "top functions: callgrind_annotate --inclusive=yes $dump | head -60"
