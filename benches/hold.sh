# Sourced by benches/instructions.sh, benches/syscalls.sh, benches/ab.sh and benches/tails.sh
# (bash, from the repository's root): install `$1` when missing (a Debian package), start the
# benchmark's rig (`benches/versus.sh --hold`, with the array `rig_args` if the caller set one,
# e.g. `--store redis`) and read what it holds. Sets: work (a fresh folder), rig (its process group),
# holding (the rig's line), gateway_pid, port (the gateway's), nginx_port, cookie, basic and
# agent (the Basic caller's `Authorization` and User-Agent), cmd (the gateway's command line) and
# nginx_conf (the rig's nginx.conf). Processes added to `held` are killed on exit, with the rig.
# `start_floor [COMMAND...]` starts `versus floor` beside them (see below).

tool="$1"
if ! command -v "$tool" >/dev/null; then
    if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$tool" >/dev/null
fi

work="$(mktemp -d)"
setsid bash benches/versus.sh --hold ${rig_args[@]+"${rig_args[@]}"} >"$work/rig.log" 2>&1 &
rig=$!
held=()
cleanup() {
    for p in "${held[@]}"; do kill "$p" 2>/dev/null || true; done
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
nginx_port="$(sed -E 's/.*  nginx https:\/\/localhost:([0-9]+) .*/\1/' <<<"$holding")"
cookie="$(grep '^cookie:' "$work/rig.log" | cut -d' ' -f2)"
# ("basic: Basic <base64> (with User-Agent: <agent>)")
basic_line="$(grep '^basic:' "$work/rig.log")"
basic="$(sed -E 's/^basic: (Basic [^ ]+) .*/\1/' <<<"$basic_line")"
agent="$(sed -E 's/.*User-Agent: ([^)]+)\).*/\1/' <<<"$basic_line")"
mapfile -d '' -t cmd <"/proc/$gateway_pid/cmdline"
# (the rig writes nginx.conf beside the gateway's configuration)
nginx_conf="$(dirname "$(sed -E 's/.*--config ([^ ]+).*/\1/' <<<"${cmd[*]}")")/nginx.conf"
oha="${OHA:-$(command -v oha || echo "${CARGO_TARGET_DIR:-target}/bench-tools/bin/oha")}"

# Start `versus floor` (benches/versus/peers.rs: the least an HTTP/1.1 proxy on the gateway's own
# libraries does) in the background on a port of its own, with the rig's certificate and upstream,
# under COMMAND if one is given (e.g. valgrind and its options). Sets floor_pid and floor_port.
start_floor() {
    local toml="" upstream cert key upstream_pid versus i
    for i in "${!cmd[@]}"; do
        if [ "${cmd[$i]}" = --config ]; then toml="${cmd[$((i + 1))]}"; fi
    done
    upstream="$(sed -nE 's#^url = "http://([^"/]+)/?"#\1#p' "$toml" | head -1)"
    cert="$(sed -nE 's#^cert_file = "([^"]+)"#\1#p' "$toml" | head -1)"
    key="$(sed -nE 's#^key_file = "([^"]+)"#\1#p' "$toml" | head -1)"
    # (the rig's upstream is `versus upstream`, a child of the rig's `versus`: the same binary
    # has the floor)
    upstream_pid="$(pgrep -s "$rig" -f -- " upstream --listen ${upstream//./\\.}( |\$)" | head -1 || true)"
    [ -n "$upstream_pid" ] || { echo "start_floor: no rig upstream at $upstream" >&2; exit 1; }
    versus="$(readlink "/proc/$upstream_pid/exe")"
    floor_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    "$@" "$versus" floor --listen "127.0.0.1:$floor_port" --upstream "$upstream" \
        --cert "$cert" --key "$key" >"$work/floor.log" 2>&1 &
    floor_pid=$!
    held+=("$floor_pid")
}
