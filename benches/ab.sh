#!/usr/bin/env bash
# Two builds of the gateway side by side on one rig: CPU time per small authenticated GET (from
# /proc/<pid>/task/*/schedstat, user and system, in nanoseconds) and requests/s, in alternating
# turns, so that the host's drift falls on both alike. For a change too small for
# benches/versus.sh's run-to-run noise; the nginx comparison is still benches/versus.sh.
#
#   benches/ab.sh OLD_BINARY NEW_BINARY [TURNS] [REQUESTS]   # default 6 turns of 60000 GETs each
#
# Build the old one first (`git stash; cargo build --release; cp target/release/faspex-gate
# /tmp/old; git stash pop`). It starts the benchmark's rig (`benches/versus.sh --hold`), stops
# the rig's gateway, and runs each binary in turn with the rig's configuration and state (the
# session survives the restarts): 2,000 GETs to warm up, then REQUESTS over 32 keep-alive TLS
# connections with oha, with the session cookie.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '7p' "$0" >&2; exit 2; }
old="$1"
new="$2"
turns="${3:-6}"
n="${4:-60000}"
for b in "$old" "$new"; do
    [ -x "$b" ] || { echo "ab: $b is not an executable" >&2; exit 2; }
done

. benches/hold.sh curl
kill "$gateway_pid"
while [ -e "/proc/$gateway_pid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$gateway_pid/status" 2>/dev/null; do
    sleep 0.2
done
url="https://localhost:$port/aspera/faspex/small"
cpu_ns() {
    local total=0 ran _
    for f in /proc/"$1"/task/*/schedstat; do
        read -r ran _ <"$f" || continue
        total=$((total + ran))
    done
    echo "$total"
}
for turn in $(seq 1 "$turns"); do
    for which in old new; do
        if [ "$which" = old ]; then cmd[0]="$old"; else cmd[0]="$new"; fi
        "${cmd[@]}" >"$work/gateway-$which.log" 2>&1 &
        gw=$!
        held+=("$gw")
        for _ in $(seq 1 150); do
            curl -sk -o /dev/null "https://localhost:$port/" && break
            sleep 0.2
        done
        "$oha" -n 2000 -c 32 --no-tui --insecure -H "Cookie: $cookie" "$url" >/dev/null
        before="$(cpu_ns "$gw")"
        report="$("$oha" -n "$n" -c 32 --no-tui --insecure -H "Cookie: $cookie" "$url")"
        after="$(cpu_ns "$gw")"
        grep -q "\[200\] $n responses" <<<"$report" || {
            echo "ab: not every request was answered 200 ($which):" >&2
            echo "$report" >&2
            exit 1
        }
        rate="$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$report")"
        printf 'turn %d %-3s %6d ns CPU per GET  %6s req/s\n' "$turn" "$which" $(((after - before) / n)) "$rate"
        kill "$gw"
        wait "$gw" 2>/dev/null || true
    done
done
