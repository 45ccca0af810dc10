#!/usr/bin/env bash
# Build the Debian package: `bash deploy/debian/build.sh` from anywhere in the checkout.
#
# 1. the release binary without the Faspex emulator (--no-default-features; the demo is left out);
# 2. what the package installs besides it, generated into the target directory: the man page and
#    the bash, zsh and fish completions (from that binary), and the configuration the package
#    installs as /etc/faspex-gate/faspex-gate.toml: config/faspex-gate.example.toml with
#    upstream.url and auth.ldap.urls left empty, so that `check-config` fails (exit 2) and the
#    maintainer scripts leave the service stopped until the site has set them;
# 3. `cargo deb --no-build`, which packs it all as [package.metadata.deb] in Cargo.toml lists
#    (cargo-deb CARGO_DEB_VERSION below; installed with `cargo install --locked` when missing).
#
# Prints the path of the .deb on its last line. Installs nothing on this machine but cargo-deb.
set -euo pipefail
cd "$(dirname "$0")/../.."

CARGO_DEB_VERSION=3.8.0
# Where cargo builds ($CARGO_TARGET_DIR, a configured target-dir, or target/).
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -d "$target" ] || mkdir -p "$target"
assets="$target/release/deb-assets"

if [ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  echo "==> cargo install --locked cargo-deb@$CARGO_DEB_VERSION" >&2
  cargo install --locked --quiet "cargo-deb@$CARGO_DEB_VERSION" >&2
fi

echo "==> cargo build --release --locked --no-default-features" >&2
cargo build --release --locked --no-default-features --bin faspex-gate >&2
bin="$target/release/faspex-gate"

echo "==> man page, completions and the packaged configuration into $assets" >&2
rm -rf "$assets"
mkdir -p "$assets"
"$bin" man | gzip -9n > "$assets/faspex-gate.1.gz"
"$bin" completions bash > "$assets/faspex-gate.bash"
"$bin" completions zsh > "$assets/_faspex-gate"
"$bin" completions fish > "$assets/faspex-gate.fish"

# The example with the two site-specific keys emptied. Each line must be found exactly once, so
# that an edit of the example cannot silently leave a placeholder that check-config would accept.
example=config/faspex-gate.example.toml
upstream='url = "https://faspex-internal.example.org"'
ldap='urls = ["ldaps://dc1.example.org", "ldaps://dc2.example.org"]'
for line in "$upstream" "$ldap"; do
  n=$(grep -cxF -- "$line" "$example" || true)
  if [ "$n" != 1 ]; then
    echo "build.sh: expected the line '$line' once in $example, found it $n times" >&2
    exit 1
  fi
done
{
  echo "# Installed by the faspex-gate package. upstream.url and auth.ldap.urls are empty: the"
  echo "# service is not started until they (and the rest of this file) are set and"
  echo "# \`faspex-gate check-config\` passes; then \`systemctl enable --now faspex-gate\`."
  echo "# This file is a conffile: upgrades keep your edits."
  echo "#"
  awk -v up="$upstream" -v ld="$ldap" '
    $0 == up { print "url = \"\""; next }
    $0 == ld { print "urls = []"; next }
    { print }' "$example"
} > "$assets/faspex-gate.toml"

echo "==> cargo deb --no-build" >&2
deb=$(cargo deb --no-build --locked --quiet | tail -n 1)
echo "$deb"
