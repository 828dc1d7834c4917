#!/usr/bin/env bash
# Installs what cmfleet's tests need on Debian (as root) and runs the whole suite.
# The tests start real sshd hosts in private mount namespaces and a real BIND.
set -euo pipefail
cd "$(dirname "$0")"
need=()
# chromium: the HTML timeline is loaded in headless chromium (tests/cli.rs).
for pair in sshd:openssh-server rsync:rsync named:bind9 dig:bind9-dnsutils tsig-keygen:bind9 ssh-agent:openssh-client git:git chromium:chromium; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p /run/sshd
log=$(mktemp)
set +e
cargo test --lib --bins --tests --examples -- --test-threads="${CMFLEET_TEST_THREADS:-4}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
passed=$(grep -oE '^test result: .* ([0-9]+) passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '; ([0-9]+) failed' "$log" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
rm -f "$log"
echo "tests: $passed passed, $failed failed"
exit "$rc"
