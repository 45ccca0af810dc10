#!/usr/bin/env bash
# The Debian package, tested for real: build it, lintian it, install it with dpkg, check what it
# installed (files, owners, modes, the account, the conffiles, the unit), see that the unconfigured
# service was not enabled, serve with the installed binary as the faspex-gate account, upgrade over
# itself with an edited conffile, remove, purge, and check that nothing is left.
#
# It installs and purges a system package, creates and deletes a system account, and installs
# lintian and cargo-deb: run it only on a disposable machine, as root. CI runs it (.ci/run, after
# .ci/test); the developers' test command does not. It refuses to run where a faspex-gate package,
# account or configuration already exists, so a real installation is never touched, and a trap
# purges what it installed and removes its files even when a check fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)

fail() { echo "deploy/debian/check.sh: FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

[ "$(id -u)" -eq 0 ] || fail "run as root, on a disposable machine: it installs and purges a package"
if dpkg -s faspex-gate >/dev/null 2>&1; then
  fail "a faspex-gate package is installed here (dpkg -s faspex-gate): refusing to touch it"
fi
for there in /etc/faspex-gate /var/lib/faspex-gate /var/log/faspex-gate; do
  [ ! -e "$there" ] || fail "$there exists (a faspex-gate installed by hand?): refusing to touch it"
done
for there in /usr/bin/faspex-gate /usr/local/bin/faspex-gate /etc/systemd/system/faspex-gate.service; do
  [ ! -e "$there" ] || fail "$there exists (a faspex-gate installed by hand?): refusing to touch it"
done
if getent passwd faspex-gate >/dev/null || getent group faspex-gate >/dev/null; then
  fail "a faspex-gate user or group exists (installed by hand?): refusing to touch it"
fi

# What must be the same afterwards.
machine_state() {
  getent passwd | sort
  getent group | sort
  { find /etc/systemd /var/lib/systemd/deb-systemd-helper-enabled \
         /var/lib/systemd/deb-systemd-helper-masked 2>/dev/null || true; } | sort
}

work=$(mktemp -d /tmp/faspex-gate-deb-check.XXXXXX)
chmod 755 "$work"
gateway_pid=
installed=
cleanup() {
  local rc=$?
  if [ -n "$gateway_pid" ]; then kill "$gateway_pid" 2>/dev/null || true; wait "$gateway_pid" 2>/dev/null || true; fi
  if [ -n "$installed" ] && dpkg -s faspex-gate >/dev/null 2>&1; then
    dpkg --purge faspex-gate >/dev/null 2>&1 || echo "cleanup: dpkg --purge faspex-gate failed" >&2
  fi
  rm -rf "$work"
  echo "deploy/debian/check.sh: $( [ $rc -eq 0 ] && echo passed || echo FAILED ) in $(( $(date +%s) - started )) s"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------- what it needs
need=()
command -v lintian >/dev/null || need+=(lintian)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v man >/dev/null || need+=(man-db)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The machine as it is once the tools are there: what must be the same afterwards.
before=$(machine_state)

# ---------------------------------------------------------------------------- build, lintian
echo "==> bash deploy/debian/build.sh"
deb=$(bash deploy/debian/build.sh | tail -n 1)
[ -f "$deb" ] || fail "build.sh printed no .deb ($deb)"
ok "built $deb ($(du -k "$deb" | cut -f1) KiB)"

echo "==> lintian"
# Every tag, info included, is printed; errors and warnings fail the check (the package has none:
# deploy/README.md explains the one override it ships).
lintian --info --display-info --pedantic --fail-on error,warning "$deb" || fail "lintian"
ok "lintian: no errors, no warnings (one tag overridden, with its reason: deploy/debian/lintian-overrides)"

# ---------------------------------------------------------------------------- install
echo "==> dpkg -i"
installed=1
out=$(DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" </dev/null 2>&1) || { echo "$out"; fail "dpkg -i"; }
echo "$out"
grep -q "the service is not started" <<<"$out" || fail "the postinst did not say the service is not started"
grep -q "upstream.url" <<<"$out" || fail "the postinst did not say what to edit"

# owner:group mode path
expect() {
  local got
  got=$(stat -c '%U:%G %a' "$3") || fail "$3 is missing"
  [ "$got" = "$1 $2" ] || fail "$3 is $got, expected $1 $2"
}
expect root:root 755 /usr/bin/faspex-gate
expect root:root 644 /lib/systemd/system/faspex-gate.service
expect root:faspex-gate 750 /etc/faspex-gate
expect root:faspex-gate 750 /etc/faspex-gate/tls
expect root:faspex-gate 640 /etc/faspex-gate/faspex-gate.toml
expect faspex-gate:faspex-gate 600 /etc/faspex-gate/session.key
expect faspex-gate:faspex-gate 600 /etc/faspex-gate/admin.token
expect faspex-gate:faspex-gate 700 /var/lib/faspex-gate
expect faspex-gate:faspex-gate 700 /var/log/faspex-gate
expect root:root 644 /etc/logrotate.d/faspex-gate
expect root:root 644 /usr/share/faspex-gate/prometheus/faspex-gate.rules.yml
expect root:root 644 /usr/share/faspex-gate/prometheus/prometheus.yml
expect root:root 644 /usr/share/faspex-gate/grafana/faspex-gate.json
expect root:root 644 /usr/share/man/man1/faspex-gate.1.gz
expect root:root 644 /usr/share/bash-completion/completions/faspex-gate
expect root:root 644 /usr/share/zsh/vendor-completions/_faspex-gate
expect root:root 644 /usr/share/fish/vendor_completions.d/faspex-gate.fish
expect root:root 644 /usr/share/doc/faspex-gate/copyright
expect root:root 644 /usr/share/doc/faspex-gate/deploy.md
ok "files, owners and modes"
cmp -s deploy/faspex-gate.service /lib/systemd/system/faspex-gate.service || fail "the unit is not deploy/faspex-gate.service"
cmp -s deploy/logrotate/faspex-gate /etc/logrotate.d/faspex-gate || fail "the logrotate snippet differs"

# The secrets are what the gateway accepts: 32 random bytes in base64, a 32-character token.
[ "$(base64 -d /etc/faspex-gate/session.key | wc -c)" -eq 32 ] || fail "session.key is not 32 bytes in base64"
[ "$(tr -d '\n' < /etc/faspex-gate/admin.token | wc -c)" -ge 16 ] || fail "admin.token is too short"
ok "session.key and admin.token made"

# The account: a system user and group, no login shell, its home the state directory.
IFS=: read -r _ _ uid gid _ home shell <<<"$(getent passwd faspex-gate)"
[ "$uid" -lt 1000 ] || fail "faspex-gate is not a system user (uid $uid)"
[ "$(getent group faspex-gate | cut -d: -f3)" = "$gid" ] || fail "faspex-gate's primary group is not faspex-gate"
[ "$home" = /var/lib/faspex-gate ] || fail "faspex-gate's home is $home"
[ "$shell" = /usr/sbin/nologin ] || fail "faspex-gate's shell is $shell"
ok "user faspex-gate (uid $uid) and group faspex-gate (gid $gid), no shell"

conffiles=$(dpkg-query -W -f='${Conffiles}\n' faspex-gate)
for f in /etc/faspex-gate/faspex-gate.toml /etc/logrotate.d/faspex-gate; do
  grep -q "^ $f " <<<"$conffiles" || fail "$f is not a conffile: $conffiles"
done
ok "conffiles: $(awk '{print $1}' <<<"$conffiles" | xargs)"

systemd-analyze verify /lib/systemd/system/faspex-gate.service || fail "systemd-analyze verify"
ok "systemd-analyze verify faspex-gate.service"

# Not configured: check-config refuses it, and the unit is neither enabled nor started.
set +e
why=$(setpriv --reuid=faspex-gate --regid=faspex-gate --init-groups \
  faspex-gate check-config --config /etc/faspex-gate/faspex-gate.toml 2>&1 >/dev/null)
code=$?
set -e
[ "$code" -eq 2 ] || fail "check-config on the packaged configuration exited $code, not 2: $why"
grep -q '^url = ""$' /etc/faspex-gate/faspex-gate.toml || fail "the packaged configuration sets upstream.url"
grep -q '^urls = \[\]$' /etc/faspex-gate/faspex-gate.toml || fail "the packaged configuration sets auth.ldap.urls"
[ ! -e /etc/systemd/system/multi-user.target.wants/faspex-gate.service ] || fail "the unconfigured unit was enabled"
state=$(systemctl is-enabled faspex-gate.service 2>&1 || true)
[ "$state" = disabled ] || fail "systemctl is-enabled faspex-gate.service: $state"
if pgrep -u faspex-gate >/dev/null; then fail "something runs as faspex-gate"; fi
ok "unconfigured: check-config exits 2, the unit is not enabled and nothing runs"

# The binary is the package's: no emulator, no test-only clock; the man page and completions
# are its own.
set +e
demo=$(faspex-gate demo 2>&1); demo_code=$?
clock=$(faspex-gate run --manual-clock 2>&1); clock_code=$?
set -e
[ "$demo_code" -eq 2 ] && grep -q "left out" <<<"$demo" || fail "demo in the packaged binary: $demo_code $demo"
[ "$clock_code" -eq 2 ] && grep -q "for tests only" <<<"$clock" || fail "run --manual-clock: $clock_code $clock"
for sh in bash zsh fish; do
  case $sh in
    bash) f=/usr/share/bash-completion/completions/faspex-gate ;;
    zsh) f=/usr/share/zsh/vendor-completions/_faspex-gate ;;
    fish) f=/usr/share/fish/vendor_completions.d/faspex-gate.fish ;;
  esac
  faspex-gate completions $sh | cmp -s - "$f" || fail "$f is not what faspex-gate completions $sh prints"
done
bash -c 'source /usr/share/bash-completion/completions/faspex-gate && complete -p faspex-gate' >/dev/null \
  || fail "the bash completion does not load"
man_warnings=$(MANROFFSEQ='' MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z /usr/share/man/man1/faspex-gate.1.gz 2>&1 >/dev/null)
[ -z "$man_warnings" ] || fail "man: $man_warnings"
man -l /usr/share/man/man1/faspex-gate.1.gz 2>/dev/null | grep -q "check-config" || fail "the man page lacks check-config"
ok "no emulator, no manual clock; man page and bash, zsh, fish completions"

# ---------------------------------------------------------------------------- serve
# A test configuration over the conffile (the site's edit that the upgrade below must keep):
# the users-file backend, loopback ports, the package's secrets, and for upstream the gateway's
# own admin listener (any loopback listener answers the readiness probe).
free_port() {
  local p
  for p in "$@"; do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  fail "no free port among $*"
}
https_port=$(free_port 18443 28443 38443)
admin_port=$(free_port 19180 29180 39180)
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout /etc/faspex-gate/tls/privkey.pem -out /etc/faspex-gate/tls/fullchain.pem 2>/dev/null
chown root:faspex-gate /etc/faspex-gate/tls/privkey.pem /etc/faspex-gate/tls/fullchain.pem
chmod 640 /etc/faspex-gate/tls/privkey.pem
chmod 644 /etc/faspex-gate/tls/fullchain.pem
hash=$(printf '%s\n' 'package test password' | faspex-gate hash-password)
printf '[users.ann]\nhash = "%s"\n' "$hash" > /etc/faspex-gate/users.toml
chown root:faspex-gate /etc/faspex-gate/users.toml
chmod 640 /etc/faspex-gate/users.toml
cat > /etc/faspex-gate/faspex-gate.toml <<CONF
# deploy/debian/check.sh: a site's edit, which an upgrade must keep.
[server]
listen = "127.0.0.1:$https_port"
[tls]
cert_file = "/etc/faspex-gate/tls/fullchain.pem"
key_file = "/etc/faspex-gate/tls/privkey.pem"
[upstream]
url = "http://127.0.0.1:$admin_port"
[admin]
listen = "127.0.0.1:$admin_port"
token_file = "/etc/faspex-gate/admin.token"
[session]
secret_file = "/etc/faspex-gate/session.key"
[auth]
backend = "file"
[auth.file]
path = "/etc/faspex-gate/users.toml"
[audit]
path = "/var/log/faspex-gate/audit.log"
[store]
path = "/var/lib/faspex-gate"
CONF
edited=$(sha256sum /etc/faspex-gate/faspex-gate.toml)
setpriv --reuid=faspex-gate --regid=faspex-gate --init-groups \
  faspex-gate check-config --config /etc/faspex-gate/faspex-gate.toml >/dev/null \
  || fail "check-config refuses the test configuration"

echo "==> faspex-gate run, as faspex-gate"
setpriv --reuid=faspex-gate --regid=faspex-gate --init-groups \
  faspex-gate run --config /etc/faspex-gate/faspex-gate.toml >"$work/gateway.log" 2>&1 &
gateway_pid=$!
for _ in $(seq 300); do
  curl -fsS "http://127.0.0.1:$admin_port/healthz" >/dev/null 2>&1 && break
  kill -0 "$gateway_pid" 2>/dev/null || { cat "$work/gateway.log"; fail "the gateway exited"; }
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$admin_port/healthz" >/dev/null || { cat "$work/gateway.log"; fail "/healthz"; }
[ "$(ps -o user= -p "$gateway_pid")" = faspex-gate ] || fail "the gateway does not run as faspex-gate"
ready=$(curl -sS "http://127.0.0.1:$admin_port/readyz") || true
[ "$ready" = ready ] || fail "/readyz: $ready"
ok "/healthz and /readyz on the admin listener"
https="https://127.0.0.1:$https_port"
code=$(curl -sk -o /dev/null -w '%{http_code}' "$https/aspera/faspex/")
case "$code" in 302|303|401) ;; *) fail "an unauthenticated request over TLS got $code" ;; esac
code=$(curl -sk -o /dev/null -w '%{http_code}' -u 'ann:wrong password' "$https/aspera/faspex/")
[ "$code" = 401 ] || fail "a wrong password got $code"
code=$(curl -sk -o /dev/null -w '%{http_code}' -u 'ann:package test password' "$https/aspera/faspex/")
case "$code" in 401|403|429|503) fail "the right password got $code" ;; esac
status=$(faspex-gate admin --config /etc/faspex-gate/faspex-gate.toml --json status)
grep -q '"seats_used": 1,' <<<"$status" || fail "admin status after ann's login: $status"
for result in bad_credentials success; do
  grep '"event":"login"' /var/log/faspex-gate/audit.log | grep '"user":"ann"' | grep -q "\"result\":\"$result\"" \
    || fail "no $result login of ann in the audit log: $(cat /var/log/faspex-gate/audit.log)"
done
expect faspex-gate:faspex-gate 600 /var/log/faspex-gate/audit.log
expect faspex-gate:faspex-gate 600 /var/lib/faspex-gate/state.redb
ok "served over TLS: no credentials and a wrong password refused, ann's let through ($code from the stand-in upstream), one seat taken, audited, state on disk"
kill -TERM "$gateway_pid"
wait "$gateway_pid" || fail "the gateway did not stop cleanly on SIGTERM"
gateway_pid=

# ---------------------------------------------------------------------------- upgrade
echo "==> dpkg -i again (an upgrade over itself, with the conffile edited)"
secrets=$(sha256sum /etc/faspex-gate/session.key /etc/faspex-gate/admin.token)
out=$(DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" </dev/null 2>&1) || { echo "$out"; fail "dpkg -i (upgrade)"; }
echo "$out"
[ "$(sha256sum /etc/faspex-gate/faspex-gate.toml)" = "$edited" ] || fail "the upgrade lost the edit of the conffile"
[ ! -e /etc/faspex-gate/faspex-gate.toml.dpkg-new ] && [ ! -e /etc/faspex-gate/faspex-gate.toml.dpkg-dist ] \
  || fail "the upgrade left a .dpkg-new or .dpkg-dist beside the conffile"
[ "$(sha256sum /etc/faspex-gate/session.key /etc/faspex-gate/admin.token)" = "$secrets" ] || fail "the upgrade replaced a secret"
grep -q "the service is not started" <<<"$out" && fail "the configured upgrade still says the service is not started"
# The package never enables the unit itself: it says how, now that the configuration passes.
grep -q "systemctl enable --now faspex-gate.service" <<<"$out" || fail "the configured upgrade does not say how to start the service"
state=$(systemctl is-enabled faspex-gate.service 2>&1 || true)
[ "$state" = disabled ] || fail "the package enabled the unit on its own: $state"
# The admin enables it, later disables it (a standby gateway, say): an upgrade keeps it disabled.
systemctl enable faspex-gate.service >/dev/null 2>&1 || fail "systemctl enable"
state=$(systemctl is-enabled faspex-gate.service 2>&1 || true)
[ "$state" = enabled ] || fail "systemctl enable did not enable it: $state"
systemctl disable faspex-gate.service >/dev/null 2>&1 || fail "systemctl disable"
out=$(DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" </dev/null 2>&1) || { echo "$out"; fail "dpkg -i (second upgrade)"; }
state=$(systemctl is-enabled faspex-gate.service 2>&1 || true)
[ "$state" = disabled ] || fail "an upgrade re-enabled the unit the admin disabled: $state"
expect root:faspex-gate 750 /etc/faspex-gate
expect root:faspex-gate 640 /etc/faspex-gate/faspex-gate.toml
[ -f /var/lib/faspex-gate/state.redb ] || fail "the upgrade lost the state"
ok "upgrade: the conffile edit and the secrets kept, the unit left as the admin set it (not enabled by the package; disabled stays disabled)"

# ---------------------------------------------------------------------------- remove, purge
files=$(dpkg -L faspex-gate | while read -r f; do [ -f "$f" ] && echo "$f"; done)
echo "==> dpkg --remove"
dpkg --remove faspex-gate >/dev/null
[ ! -e /usr/bin/faspex-gate ] || fail "remove left the binary"
for f in /etc/faspex-gate/faspex-gate.toml /etc/faspex-gate/session.key /etc/faspex-gate/admin.token \
         /var/lib/faspex-gate/state.redb /var/log/faspex-gate/audit.log; do
  [ -e "$f" ] || fail "remove deleted $f"
done
getent passwd faspex-gate >/dev/null || fail "remove deleted the user"
ok "remove: the binary gone; configuration, secrets, state, audit log and account kept"

echo "==> dpkg --purge"
dpkg --purge faspex-gate >/dev/null
if dpkg -s faspex-gate >/dev/null 2>&1; then fail "dpkg still knows faspex-gate"; fi
for f in $files /etc/faspex-gate /var/lib/faspex-gate /var/log/faspex-gate \
         /etc/systemd/system/multi-user.target.wants/faspex-gate.service; do
  [ ! -e "$f" ] && [ ! -L "$f" ] || fail "purge left $f"
done
if getent passwd faspex-gate >/dev/null; then fail "purge left the user"; fi
if getent group faspex-gate >/dev/null; then fail "purge left the group"; fi
installed=
[ "$(machine_state)" = "$before" ] || fail "the accounts or systemd's state differ from before: $(diff <(echo "$before") <(machine_state) || true)"
ok "purge: no file, directory, unit link, user or group left; the machine as it was"
