#!/usr/bin/env bash
# Checks the HA kit in deploy/ha for real, on this machine, on loopback:
#
# - Redis: from redis/redis-master.conf, redis-replica.conf (twice), sentinel.conf (three times)
#   and users.acl, copied to a temporary folder with ports moved to free loopback ports, paths
#   moved into the folder and every password placeholder replaced by a generated password, it
#   starts a master, two replicas and three sentinels. Then: replication is up; every sentinel
#   knows the master, both replicas and the other two sentinels; the sentinels' default user (the
#   gateways' discovery) may ask where the master is but not start a failover; the faspex-gate
#   ACL user may load src/store/redis/policy.lua (FUNCTION LOAD), call its functions under its
#   prefix (FCALL, FCALL_RO), run TIME, WAIT, ROLE, INFO and SET its secret fingerprint, and is
#   refused keys outside its prefix and commands it does not need; users.acl grants every
#   command policy.lua runs and every command src/store/redis sends (ACL DRYRUN); the library
#   replicates. Then a failover (SENTINEL FAILOVER): the sentinels agree on the new master, the
#   old one follows it as a replica with the replica user, and the gateway's data and functions
#   are there and writable. Then kill -9 of the master: the sentinels fail over by themselves,
#   and the killed master, started again, refuses writes until it follows the new one.
# - haproxy.cfg, when haproxy is installed: `haproxy -c` (with a generated certificate), then
#   HAProxy runs it in front of two stand-in gateways (HAProxy too): TLS to them verified by
#   name, X-Forwarded-For the client's address only, a gateway whose /readyz is 503 taken out,
#   the living gateways still served when none is ready, port 80 redirected.
# - the Redis files' TLS variant (uncommented): TLS only, replication over TLS, the gateway's user
#   without a client certificate; sentinel.conf's TLS variant watching it (three sentinels on TLS
#   only, answering the gateways' discovery without a password).
# - faspex-gate.toml.example: `faspex-gate check-config` when a built faspex-gate is at hand (also
#   with its sentinels written rediss:// and ca_file set)
#   ($FASPEX_GATE, else target/{debug,release}/faspex-gate under $CARGO_TARGET_DIR or target).
# - deploy/faspex-gate.service still lets the gateway open TCP connections to Redis.
#
# Everything it starts is stopped, and the folder removed, however it ends. Needs redis-server
# (7.0 or later), redis-cli and openssl; .ci/test installs them. Exit 0 = every check passed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
lua="$repo/src/store/redis/policy.lua"
prefix="faspex-gate"
root="{$prefix}:"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
ok() { echo "ok - $*"; }

for cmd in redis-server redis-cli openssl; do
  command -v "$cmd" >/dev/null || fail "$cmd is not installed (.ci/test installs it: apt-get install redis-server openssl)"
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/faspex-gate-ha-check.XXXXXX")"
pids=()
cleanup() {
  local code=$?
  set +e
  if [ "$code" -ne 0 ] && [ -d "$tmp" ]; then
    for log in "$tmp"/*/*.log; do
      [ -f "$log" ] || continue
      echo "--- last lines of ${log#"$tmp"/}" >&2
      tail -n 15 "$log" >&2
    done
  fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  rm -rf "$tmp"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ----- ports, passwords -----
# ports NAME N: N free loopback ports in the array NAME, none of them handed out before. They are
# below the kernel's range for outgoing connections' local ports, which no listener check sees.
used=" "
low=10000 high="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
[ "$high" -gt $((low + 2000)) ] || high=65000
ports() {
  local -n out=$1
  local p
  out=()
  while [ "${#out[@]}" -lt "$2" ]; do
    p=$((low + (RANDOM * 32768 + RANDOM) % (high - low)))
    [[ "$used" == *" $p "* ]] && continue
    # Nothing answers there (bash's /dev/tcp connects, or fails at once on loopback).
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      used+="$p "
      out+=("$p")
    fi
  done
}
password() { head -c 24 /dev/urandom | base64 | tr -d '/+=\n'; }
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

pw_admin="$(password)" pw_gate="$(password)" pw_replica="$(password)"
pw_sentinel="$(password)" pw_sentinel_admin="$(password)"
ports redis_ports 3
ports sentinel_ports 3
master_port=${redis_ports[0]}

# Every placeholder and host-specific line of the shipped files, rewritten. A line that still
# names a documentation address, an /etc or /var path or a placeholder afterwards means the files
# gained something this script does not know: it fails rather than test something else.
rewrite() { # src dest node-dir port [master-port]
  local src=$1 dest=$2 dir=$3 port=$4 master=${5:-$master_port}
  sed -e "s/^bind .*/bind 127.0.0.1/" \
    -e "s/^port [1-9][0-9]*/port $port/" \
    -e "s/^tls-port [0-9]*/tls-port $port/" \
    -e "s#/etc/redis/tls/#$tmp/tls/#" \
    -e "s/^replicaof 192\.0\.2\.21 6379$/replicaof 127.0.0.1 $master/" \
    -e "s/^sentinel monitor faspex-gate 192\.0\.2\.21 6379 2$/sentinel monitor faspex-gate 127.0.0.1 $master_port 2/" \
    -e "s#^aclfile /etc/redis/users.acl#aclfile $tmp/users.acl#" \
    -e "s#^dir /var/lib/redis#dir $dir#" \
    -e "s#^pidfile .*#pidfile $dir/pid#" \
    -e "s#^logfile .*#logfile $dir/$(basename "$dir").log#" \
    -e "s/CHANGE-ME-REPLICA-PASSWORD/$pw_replica/" \
    -e "s/CHANGE-ME-SENTINEL-PASSWORD/$pw_sentinel/" \
    -e "s/CHANGE-ME-SENTINEL-ADMIN-PASSWORD/$pw_sentinel_admin/" \
    -e "s/#SHA256-OF-SENTINEL-ADMIN-PASSWORD/#$(sha "$pw_sentinel_admin")/" \
    "$src" >"$dest"
  if grep -v '^\s*#' "$dest" | grep -nE '192\.0\.2\.|/etc/|/var/|/run/|CHANGE-ME|SHA256-OF'; then
    fail "$(basename "$src"): the lines above were not rewritten for the check; teach deploy/ha/check.sh about them"
  fi
}

sed -e "s/#SHA256-OF-ADMIN-PASSWORD/#$(sha "$pw_admin")/" \
  -e "s/#SHA256-OF-FASPEX-GATE-PASSWORD/#$(sha "$pw_gate")/" \
  -e "s/#SHA256-OF-REPLICA-PASSWORD/#$(sha "$pw_replica")/" \
  -e "s/#SHA256-OF-SENTINEL-PASSWORD/#$(sha "$pw_sentinel")/" \
  "$here/redis/users.acl" >"$tmp/users.acl"
grep -n 'SHA256-OF' "$tmp/users.acl" && fail "users.acl: a password placeholder this script does not know"

for i in 0 1 2; do
  mkdir -p "$tmp/redis$i" "$tmp/sentinel$i"
  conf=redis-replica.conf
  [ "$i" -eq 0 ] && conf=redis-master.conf
  rewrite "$here/redis/$conf" "$tmp/redis$i/redis.conf" "$tmp/redis$i" "${redis_ports[$i]}"
  rewrite "$here/redis/sentinel.conf" "$tmp/sentinel$i/sentinel.conf" "$tmp/sentinel$i" "${sentinel_ports[$i]}"
done

# ----- clients -----
as_admin() { local port=$1; shift; REDISCLI_AUTH="$pw_admin" redis-cli --no-auth-warning --user admin -p "$port" "$@"; }
as_gate() { local port=$1; shift; REDISCLI_AUTH="$pw_gate" redis-cli --no-auth-warning --user faspex-gate -p "$port" "$@"; }
# The gateways' view of a sentinel: no user, no password.
as_anyone() { local port=$1; shift; redis-cli -p "$port" "$@"; }
as_sentinel_admin() { local port=$1; shift; REDISCLI_AUTH="$pw_sentinel_admin" redis-cli --no-auth-warning --user sentinel-admin -p "$port" "$@"; }

# Poll until "$@" succeeds, for at most $1 seconds.
until_ok() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what (waited ${secs}s)"
    sleep 0.2
  done
}
# redis-cli exits 0 on a server error; these look at the answer.
answers() { # expected-substring command...
  local want=$1
  shift
  local got
  got="$("$@" 2>&1)" || return 1
  [[ "$got" == *"$want"* ]]
}
refused() { # what command...
  local what=$1 got
  shift
  got="$("$@" 2>&1)" || true
  [[ "$got" == *NOPERM* || "$got" == *"no permissions"* || "$got" == *NOAUTH* ]] || fail "$what was not refused: $got"
  ok "$what is refused"
}
field() { # name text: the value of "name:value" in INFO output
  sed -n "s/^$1:\([^\r]*\)\r*$/\1/p" <<<"$2" | head -n1
}

# ----- start -----
version="$(redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')"
[ "${version%%.*}" -ge 7 ] || fail "redis-server $version: faspex-gate needs Redis 7.0 or later"
redis_pids=()
start_redis() { # index
  redis-server "$tmp/redis$1/redis.conf" >>"$tmp/redis$1/stderr.log" 2>&1 &
  pids+=($!)
  redis_pids[$1]=$!
}
for i in 0 1 2; do start_redis "$i"; done
for i in 0 1 2; do
  until_ok 20 "redis$i (port ${redis_ports[$i]}) did not start" answers PONG as_admin "${redis_ports[$i]}" PING
done
ok "redis-server $version: a master and two replicas run from the shipped files (users.acl loads)"
refused "the default user (no password)" redis-cli -p "$master_port" GET x

slaves_up() {
  local info
  info="$(as_admin "$master_port" INFO replication)"
  [ "$(field connected_slaves "$info")" = 2 ] || return 1
  [ "$(grep -c '^slave[0-9]*:.*state=online' <<<"$info")" = 2 ] || return 1
  for i in 1 2; do
    info="$(as_admin "${redis_ports[$i]}" INFO replication)"
    [ "$(field master_link_status "$info")" = up ] || return 1
  done
}
until_ok 30 "replication did not come up (connected_slaves:2)" slaves_up
ok "replication: connected_slaves:2, both replicas' link up (user replica)"

for i in 0 1 2; do
  redis-server "$tmp/sentinel$i/sentinel.conf" --sentinel >"$tmp/sentinel$i/stderr.log" 2>&1 &
  pids+=($!)
done
sentinel_knows_all() { # port [client]
  local m
  m="$("${2:-as_anyone}" "$1" SENTINEL master faspex-gate)" || return 1
  [ "$(sed -n '/^num-slaves$/{n;p}' <<<"$m")" = 2 ] &&
    [ "$(sed -n '/^num-other-sentinels$/{n;p}' <<<"$m")" = 2 ] &&
    [ "$(sed -n '/^flags$/{n;p}' <<<"$m")" = master ]
}
for i in 0 1 2; do
  until_ok 60 "sentinel$i does not know the master, both replicas and both other sentinels" \
    sentinel_knows_all "${sentinel_ports[$i]}"
done
ok "three sentinels, each knows the master, 2 replicas and 2 other sentinels (users sentinel, sentinel-admin)"
for i in 0 1 2; do
  answers "$master_port" as_anyone "${sentinel_ports[$i]}" SENTINEL get-master-addr-by-name faspex-gate ||
    fail "sentinel$i does not answer get-master-addr-by-name with the master"
done
ok "the gateways' discovery: every sentinel answers get-master-addr-by-name, without a password"
refused "SENTINEL FAILOVER without a password" as_anyone "${sentinel_ports[0]}" SENTINEL FAILOVER faspex-gate
refused "SENTINEL SET without a password" as_anyone "${sentinel_ports[0]}" SENTINEL SET faspex-gate quorum 1
refused "SENTINEL RESET without a password" as_anyone "${sentinel_ports[0]}" SENTINEL RESET '*'

# ----- the faspex-gate user -----
info="$(as_gate "$master_port" INFO server)"
[ -n "$(field redis_version "$info")" ] || fail "faspex-gate may not read INFO server: $info"
ok "faspex-gate: INFO server (redis_version $(field redis_version "$info"))"
library="$(sed -n '1s/^#!lua name=//p' "$lua")"
[ -n "$library" ] || fail "$lua does not start with #!lua name=..."
answers "$library" as_gate "$master_port" -x FUNCTION LOAD REPLACE <"$lua" ||
  fail "faspex-gate cannot FUNCTION LOAD $lua: $(as_gate "$master_port" -x FUNCTION LOAD REPLACE <"$lua" 2>&1)"
ok "faspex-gate: FUNCTION LOAD REPLACE of policy.lua ($library)"
answers "$library" as_gate "$master_port" FUNCTION LIST LIBRARYNAME "$library" || fail "FUNCTION LIST"
answers master as_gate "$master_port" ROLE || fail "faspex-gate may not run ROLE"
answers PONG as_gate "$master_port" PING || fail "faspex-gate may not PING"
[ "$(as_gate "$master_port" TIME | wc -l)" -eq 2 ] || fail "faspex-gate may not run TIME"
ok "faspex-gate: ROLE (master), PING, TIME"
answers '"now"' as_gate "$master_port" FCALL "${library}_probe" 2 "$root" "${root}probe" s ||
  fail "FCALL ${library}_probe: $(as_gate "$master_port" FCALL "${library}_probe" 2 "$root" "${root}probe" s 2>&1)"
answers 2 as_gate "$master_port" WAIT 2 2000 || fail "WAIT 2 did not see both replicas acknowledge"
ok "faspex-gate: FCALL ${library}_probe under ${root}, then WAIT 2 -> 2"
answers '"seats"' as_gate "$master_port" FCALL_RO "${library}_counts" 1 "$root" s ||
  fail "FCALL_RO ${library}_counts: $(as_gate "$master_port" FCALL_RO "${library}_counts" 1 "$root" s 2>&1)"
ok "faspex-gate: FCALL_RO ${library}_counts"
fp="check-$(password)"
as_gate "$master_port" SET "${root}secret" "$fp" NX GET >/dev/null
answers "$fp" as_gate "$master_port" SET "${root}secret" "$fp" NX GET || fail "SET ${root}secret NX GET"
ok "faspex-gate: SET ${root}secret NX GET (the session secret's fingerprint)"
refused "a key outside the prefix (GET other:key)" as_gate "$master_port" GET other:key
refused "the prefix without its hash tag (SET $prefix:x)" as_gate "$master_port" SET "$prefix:x" 1
refused "FCALL with another site's root ({other}:)" as_gate "$master_port" FCALL "${library}_probe" 2 "{other}:" "{other}:probe" s
set -f # (KEYS *)
for cmd in "FLUSHALL" "FUNCTION FLUSH" "FUNCTION DELETE $library" "CONFIG GET maxmemory" "KEYS *" "ACL LIST" "SHUTDOWN" "REPLICAOF NO ONE"; do
  # shellcheck disable=SC2086 # the words of one command
  refused "faspex-gate: $cmd" as_gate "$master_port" $cmd
done
set +f

# Every command policy.lua runs inside its functions must be granted (ACLs apply there too).
lua_cmds="$(grep -o "redis\.p\?call('[A-Za-z_|]*'" "$lua" | sed "s/.*('//; s/'//" | tr 'A-Z' 'a-z' | sort -u)"
[ -n "$lua_cmds" ] || fail "found no redis.call in $lua"
n=0
for c in $lua_cmds; do
  arity="$(as_admin "$master_port" --raw COMMAND INFO "$c" | sed -n 2p)"
  [[ "$arity" =~ ^-?[0-9]+$ ]] || fail "policy.lua runs $c, which this Redis does not know"
  argc=$((${arity#-} - 1))
  args=()
  for _ in $(seq "$argc"); do args+=("${root}dryrun"); done
  got="$(as_admin "$master_port" ACL DRYRUN faspex-gate "$c" "${args[@]}" 2>&1)"
  [ "$got" = OK ] || fail "policy.lua runs ${c^^}, which users.acl does not grant the faspex-gate user ($got): add +$c"
  n=$((n + 1))
done
ok "users.acl grants faspex-gate each of the $n commands policy.lua runs (ACL DRYRUN)"

# And every command the gateway sends itself: redis::cmd("...") in src/store/redis (with its
# subcommand, where it has one), leaving out the modules mod.rs compiles for tests only, and
# SENTINEL, which goes to the sentinels (their default user is checked above).
redis_src="$repo/src/store/redis"
test_mods=" $(awk '/#\[cfg\(.*test/ { t = 1; next }
  t && match($0, /mod [a-z_]+;/) { print substr($0, RSTART + 4, RLENGTH - 5) } { t = 0 }' "$redis_src/mod.rs" | tr '\n' ' ') "
rust_cmds=""
for f in "$redis_src"/*.rs; do
  m="$(basename "$f" .rs)"
  [[ "$test_mods" == *" $m "* ]] && continue
  while IFS=: read -r line match; do
    c="$(sed 's/cmd("\(.*\)")/\1/' <<<"$match" | tr 'A-Z' 'a-z')"
    [ "$c" = sentinel ] && continue
    sub="$(sed -n "$line,$((line + 3))p" "$f" | grep -o '\.arg("[A-Za-z-]*")' | head -n1 | sed 's/.arg("\(.*\)")/\1/' | tr 'A-Z' 'a-z')" || true
    if [ -n "$sub" ] && [ -n "$(as_admin "$master_port" --raw COMMAND INFO "$c|$sub")" ]; then
      c="$c|$sub"
    fi
    rust_cmds+="$c "
  done < <(grep -n -o 'cmd("[A-Z_]*")' "$f")
done
rust_cmds="$(tr ' ' '\n' <<<"$rust_cmds" | sed '/^$/d' | sort -u)"
[ -n "$rust_cmds" ] || fail "found no redis::cmd(...) in $redis_src"
n=0
for c in $rust_cmds; do
  arity="$(as_admin "$master_port" --raw COMMAND INFO "$c" | sed -n 2p)"
  [[ "$arity" =~ ^-?[0-9]+$ ]] || fail "the gateway sends ${c^^}, which this Redis does not know"
  words=(${c//|/ })
  argc=$((${arity#-} - ${#words[@]}))
  args=()
  case "$c" in
    fcall | fcall_ro) args=(f 0) ;; # FUNCTION, NUMKEYS
    *) for _ in $(seq "$argc"); do args+=("${root}dryrun"); done ;;
  esac
  got="$(as_admin "$master_port" ACL DRYRUN faspex-gate "${words[@]}" "${args[@]}" 2>&1)"
  [ "$got" = OK ] || fail "the gateway sends ${c^^}, which users.acl does not grant the faspex-gate user ($got): add +$c"
  n=$((n + 1))
done
ok "users.acl grants faspex-gate each of the $n commands the gateway sends itself: $(tr '\n' ' ' <<<"$rust_cmds")(ACL DRYRUN)"

# The library replicates (unlike EVALSHA's script cache); so does the data.
for i in 1 2; do
  until_ok 10 "redis$i has no $library" answers "$library" as_admin "${redis_ports[$i]}" FUNCTION LIST LIBRARYNAME "$library"
  until_ok 10 "redis$i does not have ${root}secret" answers "$fp" as_admin "${redis_ports[$i]}" GET "${root}secret"
done
ok "both replicas have the library and the data"

# ----- a failover -----
as_sentinel_admin "${sentinel_ports[0]}" SENTINEL FAILOVER faspex-gate >/dev/null
new_master=""
moved() {
  local addr port i
  for i in 0 1 2; do
    addr="$(as_anyone "${sentinel_ports[$i]}" SENTINEL get-master-addr-by-name faspex-gate)" || return 1
    port="$(sed -n 2p <<<"$addr")"
    [ -n "$port" ] && [ "$port" != "$master_port" ] || return 1
    [ -z "$new_master" ] || [ "$port" = "$new_master" ] || return 1
    new_master=$port
  done
}
until_ok 60 "the sentinels did not agree on a new master after SENTINEL FAILOVER" moved
answers master as_gate "$new_master" ROLE || fail "the sentinels' new master (port $new_master) does not say ROLE master"
new_master_ok() {
  local info
  info="$(as_admin "$new_master" INFO replication)"
  [ "$(field role "$info")" = master ] && [ "$(grep -c '^slave[0-9]*:.*state=online' <<<"$info")" = 2 ]
}
until_ok 60 "the new master does not have both replicas online (the old master should follow it)" new_master_ok
old="$(as_admin "$master_port" INFO replication)"
[ "$(field role "$old")" = slave ] && [ "$(field master_port "$old")" = "$new_master" ] ||
  fail "the old master did not become a replica of the new one"
grep -q "^replicaof 127.0.0.1 $new_master" "$tmp/redis0/redis.conf" ||
  fail "Sentinel could not rewrite the old master's configuration (CONFIG REWRITE)"
ok "SENTINEL FAILOVER: all three sentinels name port $new_master, which says ROLE master with 2 replicas; the old master follows it and its file was rewritten"
answers "$fp" as_gate "$new_master" GET "${root}secret" || fail "the new master lost ${root}secret"
answers '"now"' as_gate "$new_master" FCALL "${library}_probe" 2 "$root" "${root}probe" s ||
  fail "FCALL on the new master: $(as_gate "$new_master" FCALL "${library}_probe" 2 "$root" "${root}probe" s 2>&1)"
answers 2 as_gate "$new_master" WAIT 2 2000 ||
  fail "WAIT 2 on the new master: $(as_gate "$new_master" WAIT 2 2000 2>&1)"
answers READONLY as_gate "$master_port" FCALL "${library}_probe" 2 "$root" "${root}probe" s ||
  fail "the demoted master still takes the gateway's writes"
ok "after the failover: the data and the library are on the new master, which takes FCALL and WAIT; the demoted one answers READONLY"

# ----- the master dies: the sentinels agree by themselves (quorum 2, down-after-milliseconds) -----
dead=$new_master
for i in 0 1 2; do [ "${redis_ports[$i]}" = "$dead" ] && dead_index=$i; done
down_after="$(sed -n 's/^sentinel down-after-milliseconds faspex-gate //p' "$here/redis/sentinel.conf")"
kill -KILL "${redis_pids[$dead_index]}"
{ wait "${redis_pids[$dead_index]}"; } 2>/dev/null || true
started=$EPOCHREALTIME
newest=""
moved_from_dead() {
  local addr port i
  newest=""
  for i in 0 1 2; do
    addr="$(as_anyone "${sentinel_ports[$i]}" SENTINEL get-master-addr-by-name faspex-gate)" || return 1
    port="$(sed -n 2p <<<"$addr")"
    [ -n "$port" ] && [ "$port" != "$dead" ] || return 1
    [ -z "$newest" ] || [ "$port" = "$newest" ] || return 1
    newest=$port
  done
  answers master as_gate "$newest" ROLE
}
until_ok 60 "the sentinels did not fail over by themselves after kill -9 of the master" moved_from_dead
gap_ms=$(( (${EPOCHREALTIME/./} - ${started/./}) / 1000 ))
ok "kill -9 of the master: all three sentinels agreed on port $newest, which says ROLE master, ${gap_ms} ms later (down-after-milliseconds $down_after)"
# The dead master comes back from its own file, still believing it is the master: with no
# replica it refuses writes (min-replicas-to-write), and Sentinel turns it into a replica.
start_redis "$dead_index"
until_ok 20 "the old master did not start again" answers PONG as_admin "$dead" PING
got="$(as_gate "$dead" FCALL "${library}_probe" 2 "$root" "${root}probe" s 2>&1)" || true
[[ "$got" == *NOREPLICAS* || "$got" == *READONLY* || "$got" == *LOADING* ]] ||
  fail "the returning old master took the gateway's write: $got"
new_master=$newest
until_ok 60 "the returning old master did not become a replica of the new one (both replicas online)" new_master_ok
answers '"now"' as_gate "$newest" FCALL "${library}_probe" 2 "$root" "${root}probe" s || fail "FCALL on the newest master"
answers 2 as_gate "$newest" WAIT 2 2000 || fail "WAIT 2 on the newest master"
answers "$fp" as_gate "$newest" GET "${root}secret" || fail "the newest master lost ${root}secret"
ok "the returning old master refused the write ($(cut -d' ' -f1 <<<"$got")), then followed the new master; FCALL, WAIT 2 and the data are fine there"

# ----- the TLS variant: one master for rediss:// URLs, and its replicas -----
# The commented TLS lines of the Redis files, uncommented, with a generated CA and certificate.
mkdir -p "$tmp/tls"
(
  cd "$tmp/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=check-ca -keyout ca.key -out ca.crt
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout redis.key -out redis.csr
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
  openssl x509 -req -in redis.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -extfile san.ext -out redis.crt
) >/dev/null 2>&1 || fail "openssl could not make a test certificate"
ports tls_ports 3
for i in 0 1 2; do
  mkdir -p "$tmp/tls$i"
  conf=redis-replica.conf
  [ "$i" -eq 0 ] && conf=redis-master.conf
  sed -e 's/^# \(port 0\)$/\1/' -e 's/^# \(tls-[a-z-]* [^ ]*\)$/\1/' "$here/redis/$conf" >"$tmp/tls$i/shipped.conf"
  grep -q '^tls-port' "$tmp/tls$i/shipped.conf" || fail "$conf has no commented TLS variant (# tls-port ...)"
  rewrite "$tmp/tls$i/shipped.conf" "$tmp/tls$i/redis.conf" "$tmp/tls$i" "${tls_ports[$i]}" "${tls_ports[0]}"
  redis-server "$tmp/tls$i/redis.conf" >"$tmp/tls$i/stderr.log" 2>&1 &
  pids+=($!)
done
tls_admin() { local port=$1; shift; as_admin "$port" --tls --cacert "$tmp/tls/ca.crt" "$@"; }
tls_gate() { local port=$1; shift; as_gate "$port" --tls --cacert "$tmp/tls/ca.crt" "$@"; }
for i in 0 1 2; do
  until_ok 20 "tls$i (the TLS variant, port ${tls_ports[$i]}) did not start" answers PONG tls_admin "${tls_ports[$i]}" PING
done
answers PONG as_admin "${tls_ports[0]}" PING && fail "the TLS variant still answers plain TCP"
tls_slaves_up() {
  [ "$(grep -c '^slave[0-9]*:.*state=online' <<<"$(tls_admin "${tls_ports[0]}" INFO replication)")" = 2 ]
}
until_ok 30 "the TLS variant's replication did not come up (tls-replication)" tls_slaves_up
answers "$library" tls_gate "${tls_ports[0]}" -x FUNCTION LOAD REPLACE <"$lua" ||
  fail "FUNCTION LOAD over TLS: $(tls_gate "${tls_ports[0]}" -x FUNCTION LOAD REPLACE <"$lua" 2>&1)"
answers '"now"' tls_gate "${tls_ports[0]}" FCALL "${library}_probe" 2 "$root" "${root}probe" s || fail "FCALL over TLS"
answers 2 tls_gate "${tls_ports[0]}" WAIT 2 2000 || fail "WAIT 2 over TLS"
ok "the TLS variant: TLS only (no plain port), replication over TLS (2 replicas), the faspex-gate user without a client certificate (tls-auth-clients no): FUNCTION LOAD, FCALL, WAIT 2"

# sentinel.conf's TLS variant watching it: "port 0" and the tls- lines uncommented, as the
# gateways' rediss:// sentinels.
ports tls_sentinel_ports 3
for i in 0 1 2; do
  d="$tmp/tls-sentinel$i"
  mkdir -p "$d"
  sed -e 's/^port 26379$/port 0/' -e 's/^# \(tls-[a-z-]* [^ ]*\)$/\1/' "$here/redis/sentinel.conf" >"$d/shipped.conf"
  grep -q '^tls-port' "$d/shipped.conf" || fail "sentinel.conf has no commented TLS variant (# tls-port ...)"
  grep -q '^port 0$' "$d/shipped.conf" || fail "sentinel.conf: no \"port 26379\" line for the TLS variant to close"
  rewrite "$d/shipped.conf" "$d/sentinel.conf" "$d" "${tls_sentinel_ports[$i]}"
  sed -i "s/^sentinel monitor faspex-gate 127\.0\.0\.1 [0-9]* 2$/sentinel monitor faspex-gate 127.0.0.1 ${tls_ports[0]} 2/" "$d/sentinel.conf"
  redis-server "$d/sentinel.conf" --sentinel >"$d/stderr.log" 2>&1 &
  pids+=($!)
done
tls_anyone() { local port=$1; shift; as_anyone "$port" --tls --cacert "$tmp/tls/ca.crt" "$@"; }
for i in 0 1 2; do
  until_ok 60 "TLS sentinel$i does not know the master, both replicas and both other sentinels" \
    sentinel_knows_all "${tls_sentinel_ports[$i]}" tls_anyone
  answers "${tls_ports[0]}" tls_anyone "${tls_sentinel_ports[$i]}" SENTINEL get-master-addr-by-name faspex-gate ||
    fail "TLS sentinel$i does not answer get-master-addr-by-name with the TLS master"
done
answers PONG as_anyone "${tls_sentinel_ports[0]}" PING && fail "sentinel.conf's TLS variant still answers plain TCP"
refused "SENTINEL FAILOVER without a password (TLS)" tls_anyone "${tls_sentinel_ports[0]}" SENTINEL FAILOVER faspex-gate
ok "sentinel.conf's TLS variant: three sentinels on TLS only watch the TLS master (2 replicas, 2 other sentinels each, over TLS) and answer the gateways' get-master-addr-by-name without a password"

# ----- HAProxy -----
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=faspex.example.org -addext subjectAltName=DNS:faspex.example.org \
  -keyout "$tmp/privkey.pem" -out "$tmp/fullchain.pem" 2>/dev/null
if command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ]; then
  haproxy_bin="$(command -v haproxy || echo /usr/sbin/haproxy)"
  cat "$tmp/fullchain.pem" "$tmp/privkey.pem" >"$tmp/lb.pem"
  mkdir -p "$tmp/haproxy"
  # lb: https, http; g1, g2: the two gateways' HTTPS; a1, a2: their admin listeners; ctl: the
  # stand-ins' runtime API.
  ports hp 6
  lb=${hp[0]} lb80=${hp[1]} g1=${hp[2]} g2=${hp[3]} a1=${hp[4]} a2=${hp[5]}
  ports hp 2
  ctl=${hp[0]} lbctl=${hp[1]}
  # The shipped file, with its addresses, certificate paths and check interval moved for the
  # check, and without chroot, user and daemon (it runs in the foreground, as whoever runs this).
  sed -e "s#/etc/haproxy/certs/faspex.example.org.pem#$tmp/lb.pem#" \
    -e "s/192\.0\.2\.10:443 /127.0.0.1:$lb /" -e "s/192\.0\.2\.10:80$/127.0.0.1:$lb80/" \
    -e "s/^    server gw1 192\.0\.2\.11:443$/    server gw1 127.0.0.1:$g1 port $a1/" \
    -e "s/^    server gw2 192\.0\.2\.12:443$/    server gw2 127.0.0.1:$g2 port $a2/" \
    -e "s#ca-file @system-ca#ca-file $tmp/fullchain.pem#" -e "s/ inter 2s / inter 100ms /" \
    -e "s/^    maxconn [0-9]*$/    maxconn 500/" \
    -e "s#^    stats socket /run/haproxy/admin.sock .*#    stats socket ipv4@127.0.0.1:$lbctl level admin#" \
    -e '/^    chroot /d' -e '/^    user /d' -e '/^    group /d' -e '/^    daemon$/d' -e '/^    log \/dev\/log/d' \
    "$here/haproxy.cfg" >"$tmp/haproxy/haproxy.cfg"
  if grep -v '^\s*#' "$tmp/haproxy/haproxy.cfg" | grep -nE '192\.0\.2\.|/etc/|/run/|@system-ca| inter 2s'; then
    fail "haproxy.cfg: the lines above were not rewritten for the check; teach deploy/ha/check.sh about them"
  fi
  out="$("$haproxy_bin" -c -f "$tmp/haproxy/haproxy.cfg" 2>&1)" || fail "haproxy -c -f haproxy.cfg: $out"
  ok "haproxy -c: haproxy.cfg is valid ($("$haproxy_bin" -v | head -n1 | cut -d' ' -f1-3))"

  # Two stand-in gateways (HAProxy too): HTTPS answering with their name and the forwarding
  # headers they got, and an admin listener whose /readyz is 503 while the runtime map says so.
  : >"$tmp/haproxy/unready.map"
  stand_in() { # name https-port admin-port
    cat <<CONF
frontend $1
    bind 127.0.0.1:$2 ssl crt $tmp/lb.pem
    http-request return status 200 content-type text/plain lf-string "$1 xff=%[req.fhdr(x-forwarded-for)] proto=%[req.fhdr(x-forwarded-proto)]"
frontend $1-admin
    bind 127.0.0.1:$3
    http-request return status 503 content-type text/plain string "store: down" if { path /readyz } { str($1),map($tmp/haproxy/unready.map) -m found }
    http-request return status 200 content-type text/plain string "ok"
CONF
  }
  {
    printf 'global\n    stats socket ipv4@127.0.0.1:%s level admin\n' "$ctl"
    printf 'defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n'
    stand_in gw1 "$g1" "$a1"
    stand_in gw2 "$g2" "$a2"
  } >"$tmp/haproxy/gateways.cfg"
  "$haproxy_bin" -db -f "$tmp/haproxy/gateways.cfg" >"$tmp/haproxy/gateways.log" 2>&1 &
  pids+=($!)
  "$haproxy_bin" -db -f "$tmp/haproxy/haproxy.cfg" >"$tmp/haproxy/haproxy.log" 2>&1 &
  pids+=($!)
  runtime() { # port command: one command to an HAProxy runtime API, its answer on stdout
    exec 5<>"/dev/tcp/127.0.0.1/$1"
    printf '%s\n' "$2" >&5
    cat <&5
    exec 5<&-
  }
  unready() { # name: the stand-in's /readyz says 503 from now on
    runtime "$ctl" "add map $tmp/haproxy/unready.map $1 1" >/dev/null
  }
  ready_in_lb() { # the servers of backend "gateways" that HAProxy has UP, by name
    runtime "$lbctl" "show stat" | awk -F, '$1 == "gateways" && $2 ~ /^gw/ && $18 ~ /^UP/ { print $2 }' |
      sort | tr '\n' ' '
  }
  lb_ready_is() { [ "$(ready_in_lb)" = "$1" ]; }
  # One HTTPS request through the balancer, as a client claiming another address.
  through_lb() {
    printf 'GET /aspera/faspex/ HTTP/1.1\r\nHost: faspex.example.org\r\nX-Forwarded-For: 203.0.113.66\r\nConnection: close\r\n\r\n' |
      timeout 5 openssl s_client -quiet -connect "127.0.0.1:$lb" -servername faspex.example.org 2>/dev/null
  }
  served_by() { # what: every one of 6 requests is answered 200 by a gateway in the pattern
    local i got
    for i in 1 2 3 4 5 6; do
      got="$(through_lb)" || return 1
      [[ "$got" == "HTTP/1.1 200"* ]] || return 1
      grep -qE "^($1) xff=127\.0\.0\.1 proto=https" <<<"$got" || return 1
    done
  }
  until_ok 20 "HAProxy does not serve through both gateways once they are ready" served_by 'gw1|gw2'
  got="$(through_lb)"
  ok "HAProxy: TLS to the gateways checked by name; X-Forwarded-For is the client's address only (a forged one dropped), X-Forwarded-Proto https ($(grep -o 'gw[12] xff=.*' <<<"$got"))"
  until_ok 20 "HAProxy does not see both gateways ready: $(ready_in_lb)" lb_ready_is "gw1 gw2 "
  unready gw1
  until_ok 20 "HAProxy still has gw1 ready while its /readyz is 503" lb_ready_is "gw2 "
  served_by gw2 || fail "HAProxy still sends requests to gw1 while its /readyz is 503"
  ok "HAProxy: a gateway whose /readyz is 503 is taken out, and gets no requests"
  unready gw2
  until_ok 20 "HAProxy still has gw2 ready while its /readyz is 503" lb_ready_is ""
  served_by 'gw1|gw2' || fail "HAProxy answers nothing when no gateway is ready"
  ok "HAProxy: when no gateway is ready, the living ones still get the requests (gateways_alive)"
  exec 5<>"/dev/tcp/127.0.0.1/$lb80"
  printf 'GET /x HTTP/1.1\r\nHost: faspex.example.org\r\nConnection: close\r\n\r\n' >&5
  got="$(timeout 5 cat <&5)" || true
  exec 5<&-
  [[ "$got" == "HTTP/1.1 301"* && "$got" == *"location: https://faspex.example.org/x"* ]] ||
    fail "port 80 does not redirect to https: $got"
  ok "HAProxy: port 80 redirects to https"
else
  echo "not checked - haproxy.cfg: haproxy is not installed (apt-get install haproxy)"
fi

# ----- the gateway's configuration -----
gate="${FASPEX_GATE:-}"
if [ -z "$gate" ]; then
  for c in "${CARGO_TARGET_DIR:-$repo/target}"/{debug,release}/faspex-gate; do
    [ -x "$c" ] && gate=$c && break
  done
fi
if [ -n "$gate" ]; then
  mkdir -p "$tmp/etc/tls" "$tmp/log"
  (
    umask 077
    head -c 32 /dev/urandom | base64 >"$tmp/etc/session.key"
    password >"$tmp/etc/admin.token"
    password >"$tmp/etc/ldap-bind.password"
    printf '%s\n' "$pw_gate" >"$tmp/etc/redis.password"
  )
  cp "$tmp/fullchain.pem" "$tmp/privkey.pem" "$tmp/etc/tls/"
  sed -e "s#/etc/faspex-gate/#$tmp/etc/#g" -e "s#/var/log/faspex-gate/#$tmp/log/#g" \
    "$here/faspex-gate.toml.example" >"$tmp/gw1.toml"
  out="$("$gate" check-config --config "$tmp/gw1.toml" 2>&1)" || fail "faspex-gate check-config faspex-gate.toml.example: $out"
  grep -q '^kind = "redis"' <<<"$out" || fail "check-config did not show store.kind = \"redis\": $out"
  ok "faspex-gate check-config accepts faspex-gate.toml.example ($gate)"
  # With TLS: the sentinels written rediss://, ca_file the CA.
  sed -e 's#^sentinels = \["\([^"]*\)", "\([^"]*\)", "\([^"]*\)"\]$#sentinels = ["rediss://\1", "rediss://\2", "rediss://\3"]#' \
    -e "s#^ca_file = \"\"#ca_file = \"$tmp/tls/ca.crt\"#" "$tmp/gw1.toml" >"$tmp/gw1-tls.toml"
  grep -q '^sentinels = \["rediss://' "$tmp/gw1-tls.toml" || fail "faspex-gate.toml.example: no sentinels line to write rediss://"
  out="$("$gate" check-config --config "$tmp/gw1-tls.toml" 2>&1)" || fail "faspex-gate check-config with rediss:// sentinels: $out"
  grep -q 'rediss://192.0.2.21:26379' <<<"$out" || fail "check-config did not show the rediss:// sentinels: $out"
  ok "faspex-gate check-config accepts it with TLS: rediss:// sentinels and ca_file"
else
  echo "not checked - faspex-gate.toml.example: no built faspex-gate (cargo build, or set FASPEX_GATE)"
fi

# ----- the unit's hardening, for a gateway that talks to Redis -----
unit="$repo/deploy/faspex-gate.service"
families="$(sed -n 's/^RestrictAddressFamilies=//p' "$unit")"
[[ " $families " == *" AF_INET "* && " $families " == *" AF_INET6 "* ]] ||
  fail "faspex-gate.service: RestrictAddressFamilies=$families leaves out TCP over IPv4 or IPv6 (Redis, sentinels)"
if grep -qE '^(PrivateNetwork=(yes|true)|IPAddressDeny=)' "$unit"; then
  fail "faspex-gate.service cuts the gateway off the network (PrivateNetwork= or IPAddressDeny=): it must reach Redis and the sentinels"
fi
ok "faspex-gate.service lets the gateway reach Redis (AF_INET, AF_INET6; no PrivateNetwork, no IPAddressDeny)"

echo "deploy/ha/check.sh: all checks passed"
