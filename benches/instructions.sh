#!/usr/bin/env bash
# User-space instructions per small authenticated GET through faspex-gate, counted by valgrind's
# callgrind: a figure that repeats on a shared machine, where requests/s drift by a fifth from
# run to run. Use it to compare two builds; the nginx comparison is benches/versus.sh.
#
#   benches/instructions.sh [--store redis] [REQUESTS] [cookie|basic|nginx|floor] [h1|h2]   # default 10000, cookie, h1
#
# `h2` sends the requests over HTTP/2 (oha `--http2`: one stream at a time on each of the 32
# connections) instead of HTTP/1.1.
# `--store redis` runs the rig on a local redis-server (the Redis store and its session view).
# GATEWAY=path counts that binary instead of the rig's, with the rig's configuration (to compare
# two builds; build both the same way).
# `basic` sends HTTP Basic credentials instead (the rig's Basic caller, with its User-Agent), each
# request a hit of the gateway's verification cache after the warm-up. `nginx` counts the rig's
# nginx `proxy_pass` peer instead of the gateway, for the same GET with the same cookie: a copy of
# its configuration, its one worker in the foreground (`master_process off`) on ports of its own,
# under callgrind in the same way. `floor` counts `versus floor` instead (benches/versus/peers.rs):
# the least an HTTP/1.1 proxy on the gateway's own libraries (tokio, rustls on ring, hyper's server
# and client) does, with the rig's certificate and upstream, for the same GET with the same cookie,
# unchecked: what the gateway's count would be with no policy path and no safeguards.
#
# It starts the benchmark's rig (`benches/versus.sh --hold`: upstream, slapd, gateway, nginx),
# restarts the rig's gateway under callgrind with the same configuration and state (the
# session survives the restart), sends 500 requests to warm up, zeroes the counters, sends
# REQUESTS more over 32 keep-alive TLS connections with oha, and divides. The kernel's share
# (socket calls) is not counted; the 32 TLS handshakes are, spread over the requests.
set -euo pipefail
cd "$(dirname "$0")/.."
rig_args=()
if [ "${1:-}" = --store ]; then
    rig_args=(--store "$2")
    shift 2
fi
n="${1:-10000}"
credentials="${2:-cookie}"
case "$credentials" in cookie | basic | nginx | floor) ;; *) echo "instructions: cookie, basic, nginx or floor, not $credentials" >&2; exit 2 ;; esac
protocol="${3:-h1}"
case "$protocol" in h1) version=() ;; h2) version=(--http2) ;; *) echo "instructions: h1 or h2, not $protocol" >&2; exit 2 ;; esac

. benches/hold.sh valgrind

if [ "$credentials" = nginx ]; then
    # The rig's nginx.conf, its two servers moved to ports of their own (the rig's nginx keeps
    # its ports), one worker process and no master, in the foreground.
    conf="$nginx_conf"
    [ -f "$conf" ] || { echo "instructions: no nginx.conf beside the rig's gateway.toml" >&2; exit 1; }
    free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    port="$(free_port)"
    {
        echo "daemon off;"
        echo "master_process off;"
        sed -E -e "s#^pid .*#pid $work/nginx.pid;#" -e "s#access_log [^;]*;#access_log $work/nginx-access.log;#" "$conf"
    } >"$work/nginx.conf"
    while read -r listen; do
        p="${listen##*:}"
        if [ "$p" = "$nginx_port" ]; then new="$port"; else new="$(free_port)"; fi
        sed -i "s/listen 127.0.0.1:$p ssl/listen 127.0.0.1:$new ssl/" "$work/nginx.conf"
    done < <(grep -oE 'listen 127\.0\.0\.1:[0-9]+' "$conf")
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
        "$(command -v nginx || echo /usr/sbin/nginx)" -c "$work/nginx.conf" >"$work/nginx.log" 2>&1 &
    vg=$!
    held+=("$vg")
elif [ "$credentials" = floor ]; then
    [ "$protocol" = h1 ] || { echo "instructions: the floor speaks HTTP/1.1 only" >&2; exit 2; }
    start_floor valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out"
    vg="$floor_pid"
    port="$floor_port"
else
    kill "$gateway_pid"
    # (it stays a zombie until the rig reaps it: wait for it to have exited, not to be gone)
    while [ -e "/proc/$gateway_pid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$gateway_pid/status" 2>/dev/null; do
        sleep 0.2
    done
    cmd[0]="${GATEWAY:-${cmd[0]}}"
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "${cmd[@]}" \
        >"$work/gateway.log" 2>&1 &
    vg=$!
    held+=("$vg")
fi
url="https://localhost:$port/aspera/faspex/small"
for _ in $(seq 1 120); do
    curl -sk -o /dev/null "https://localhost:$port/" && break
    sleep 1
done

if [ "$credentials" = basic ]; then
    headers=(-H "Authorization: $basic" -H "User-Agent: $agent")
else
    headers=(-H "Cookie: $cookie")
fi
load() {
    "$oha" -n "$1" -c 32 ${version[@]+"${version[@]}"} --no-tui --insecure "${headers[@]}" "$url"
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
if [ "$credentials" = floor ]; then
    echo "floor (versus floor): $((total / n)) user-space instructions per small GET (cookie, not checked, $protocol; $n requests; $dump)"
elif [ "$credentials" = nginx ]; then
    echo "nginx proxy_pass: $((total / n)) user-space instructions per small GET (cookie, not checked, $protocol; $n requests; $dump)"
else
    echo "faspex-gate: $((total / n)) user-space instructions per small authenticated GET ($credentials, $protocol, $n requests; $dump)"
fi
echo "top functions: callgrind_annotate --inclusive=yes $dump | head -60"
