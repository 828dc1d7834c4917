#!/usr/bin/env bash
# The lab demo on a fresh Debian machine, as root: installs what the lab needs,
# builds cmfleet, starts a lab of real sshd hosts, migrates it, and stops the lab.
# Extra arguments go to `cmfleet lab demo` (e.g. --relays 20 --keep).
set -euo pipefail
cd "$(dirname "$0")"
need=()
for pair in sshd:openssh-server rsync:rsync ssh-agent:openssh-client git:git python3:python3 unshare:util-linux; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --release --quiet
exec ./target/release/cmfleet lab demo "$@"
