#!/usr/bin/env bash
# Installs what cmfleet's tests need on Debian (as root) and runs the whole suite.
# The tests start real sshd hosts in private mount namespaces and a real BIND.
set -euo pipefail
cd "$(dirname "$0")"
need=()
for pair in sshd:openssh-server rsync:rsync named:bind9 dig:bind9-dnsutils tsig-keygen:bind9 ssh-agent:openssh-client git:git; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p /run/sshd
cargo test --all-targets -- --test-threads="${CMFLEET_TEST_THREADS:-4}"
