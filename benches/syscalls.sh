#!/usr/bin/env bash
# System calls per small GET, faspex-gate beside nginx `proxy_pass` and `versus floor` (the least an
# HTTP/1.1 proxy on the gateway's own libraries does, nothing checked), counted by `strace -c`:
# where each proxy's kernel time goes (on loopback most of a small GET's CPU is the kernel's).
#
#   benches/syscalls.sh [REQUESTS]   # default 20000, with the session cookie, HTTP/1.1
#
# It starts the benchmark's rig (`benches/versus.sh --hold`) and the floor beside it, then for each
# of the three warms it up, splits its CPU time per GET into user and system time
# (/proc/<pid>/stat, over 10 × REQUESTS GETs without strace: clock ticks are coarse), then attaches
# strace to the process (the gateway with its threads; nginx's one worker; the floor's one
# thread), sends REQUESTS GETs over 32 keep-alive TLS connections with oha, and prints strace's
# table divided by REQUESTS. strace slows each a great deal: the rates it prints are not the
# proxies' speed.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20000}"

. benches/hold.sh strace
gateway_port="$port"
conf="$nginx_conf"
master="$(pgrep -f -- "-c $conf" | head -1)"
worker="$(pgrep -P "$master" | head -1)"
[ -n "$worker" ] || { echo "syscalls: no nginx worker for $conf" >&2; exit 1; }

ticks="$(getconf CLK_TCK)"
# User and system CPU time of a process (its threads included), in clock ticks.
cpu_ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; }

count() {
    local name="$1" pid="$2" port="$3" flags="$4"
    local url="https://localhost:$port/aspera/faspex/small"
    "$oha" -n 1000 -c 32 --no-tui --insecure -H "Cookie: $cookie" "$url" >/dev/null
    local m=$((10 * n)) u0 s0 u1 s1
    read -r u0 s0 < <(cpu_ticks "$pid")
    report="$("$oha" -n "$m" -c 32 --no-tui --insecure -H "Cookie: $cookie" "$url")"
    read -r u1 s1 < <(cpu_ticks "$pid")
    grep -q "\[200\] $m responses" <<<"$report" || {
        echo "syscalls: not every request to $name was answered 200:" >&2
        echo "$report" >&2
        exit 1
    }
    echo "## $name: CPU per small GET ($m GETs, no strace)"
    awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v t="$ticks" -v m="$m" 'BEGIN {
        printf "user %6.1f µs, system %6.1f µs, both %6.1f µs\n", u / t / m * 1e6, s / t / m * 1e6, (u + s) / t / m * 1e6 }'
    echo
    # shellcheck disable=SC2086
    strace $flags -c -o "$work/$name.strace" -p "$pid" 2>/dev/null &
    st=$!
    held+=("$st")
    sleep 1
    report="$("$oha" -n "$n" -c 32 --no-tui --insecure -H "Cookie: $cookie" "$url")"
    kill -INT "$st"
    wait "$st" || true
    grep -q "\[200\] $n responses" <<<"$report" || {
        echo "syscalls: not every request to $name was answered 200:" >&2
        echo "$report" >&2
        exit 1
    }
    echo "## $name: system calls per small GET ($n GETs)"
    awk -v n="$n" '
        $NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {
            errors = (NF == 6) ? $5 : 0
            if ($4 / n >= 0.01) printf "%-14s %6.2f  (%.2f failed)\n", $NF, $4 / n, errors / n
            total += $4
        }
        END { printf "%-14s %6.2f\n", "all", total / n }' "$work/$name.strace"
    echo
}
start_floor
for _ in $(seq 1 50); do grep -q '^ready' "$work/floor.log" && break; sleep 0.2; done
grep -q '^ready' "$work/floor.log" || { echo "syscalls: the floor did not start:" >&2; cat "$work/floor.log" >&2; exit 1; }
count faspex-gate "$gateway_pid" "$gateway_port" -f
count "nginx proxy_pass" "$worker" "$nginx_port" ""
count "floor (versus floor)" "$floor_pid" "$floor_port" ""
