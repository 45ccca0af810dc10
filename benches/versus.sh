#!/usr/bin/env bash
# faspex-gate against nginx, side by side: the one command.
#
#   benches/versus.sh            # 5 rounds of every scenario (well over half an hour on 2 cores)
#   benches/versus.sh --only small   # only the small GETs' matrix: cookie and Basic, HTTP/1.1
#                                    # and HTTP/2 (about 20 minutes)
#   benches/versus.sh --smoke    # one short round, only to prove the benchmark still works
#   benches/versus.sh --rounds 3 --workers 2 --json /tmp/versus.json
#   benches/versus.sh --store redis   # the gateway on a redis-server of its own (Debian's redis-server)
#   benches/versus.sh --only streams --stream-mib 256 --rounds 1   # streams (HTTP/1.1 and HTTP/2), shorter
#   benches/versus.sh --only failover   # 5 × kill -9 of a Sentinel-watched Redis master, the gap clients see
#
# It installs what it needs and is missing (Debian's nginx-light, wrk, nghttp2-client for
# h2load (HTTP/2), curl, sqlite3 to read oha's per-request records, slapd and ldap-utils; oha
# with `cargo install`), builds faspex-gate in release mode, and runs
# `cargo bench --bench versus`, which prints the tables and writes the results as JSON
# (target/versus.json by default). A run with any non-2xx answer or socket error exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v curl >/dev/null || need+=(curl)
command -v sqlite3 >/dev/null || need+=(sqlite3)
[ -x /usr/sbin/slapd ] || need+=(slapd)
command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || need+=(redis-server)
command -v ldapwhoami >/dev/null || need+=(ldap-utils)
if [ ${#need[@]} -gt 0 ]; then
    echo "versus: installing ${need[*]}" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    # slapd asks no questions when DEBIAN_FRONTEND is noninteractive; nginx must not start.
    as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -q --no-install-recommends \
        "${need[@]}" >/dev/null
fi
# Debian starts the packaged services: the benchmark runs its own, on its own ports.
for svc in nginx slapd redis-server; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
        as_root systemctl stop "$svc" || true
    fi
done

# The smoke run proves that the benchmark still works; its figures are not quoted. It builds oha
# and the gateway without the release profile's whole-program LTO and with 16 codegen units, and
# the bench itself (the driver and its own clients) in the dev profile, on the dependencies
# `cargo test` has already built: that saves CI most of the build. The figures come from the full
# run, everything built as shipped.
bench_profile=(--profile bench)
for arg in "$@"; do
    if [ "$arg" = "--smoke" ]; then
        export CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
        bench_profile=(--profile dev)
    fi
done

OHA_VERSION=1.16.0
oha_root="${CARGO_TARGET_DIR:-target}/bench-tools"
if [ -n "${OHA:-}" ] && [ -x "$OHA" ]; then
    :
elif command -v oha >/dev/null; then
    OHA="$(command -v oha)"
else
    OHA="$oha_root/bin/oha"
    if [ ! -x "$OHA" ]; then
        echo "versus: building oha $OHA_VERSION (once; it lands in $oha_root)" >&2
        cargo install --quiet --locked --root "$oha_root" --version "$OHA_VERSION" oha
    fi
fi
export OHA

# Thousands of connections at once: raise the descriptor limit for everything started below.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# The gateway as it ships: `cargo bench` would build it with the dev-dependencies' features too.
cargo build --release --locked --bin faspex-gate
target_dir="${CARGO_TARGET_DIR:-target}"
# (a new file, not written over: the old one may be running, or hard-linked into another tree)
rm -f "$target_dir/release/faspex-gate-versus"
cp "$target_dir/release/faspex-gate" "$target_dir/release/faspex-gate-versus"
export FASPEX_GATE_BIN="$PWD/$target_dir/release/faspex-gate-versus"
case "$target_dir" in /*) export FASPEX_GATE_BIN="$target_dir/release/faspex-gate-versus" ;; esac
exec cargo bench --locked "${bench_profile[@]}" --bench versus -- "$@"
