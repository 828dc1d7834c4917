#!/usr/bin/env bash
# Installs what cmfleet's tests need on Debian (as root) and runs the whole suite.
# The tests start real sshd hosts in private mount namespaces and a real BIND.
set -euo pipefail
cd "$(dirname "$0")"
need=()
# Lab hosts run Debian's own Postfix and Dovecot (each in its mount namespace);
# chromium: the HTML timeline is loaded in headless chromium (tests/cli.rs);
# shellcheck lints every shell program cmfleet runs (tests/shellcheck.rs).
# Real lab hosts (tests/real_lab.rs) are systemd-nspawn containers of a rootfs that
# mmdebstrap builds, NATed by nftables. The real-chatmail checkout's venv
# (tests/real_chatmail_checkout.rs) is made with Debian's python3 like chatmail's
# initenv.sh: gcc and python3-dev build chatmaild's crypt-r (by path: a pyenv shim may
# answer for python3-config), python3-venv has its ensurepip.
for pair in sshd:openssh-server rsync:rsync named:bind9 dig:bind9-dnsutils tsig-keygen:bind9 ssh-agent:openssh-client git:git chromium:chromium \
    postfix:postfix dovecot:dovecot-imapd /usr/lib/dovecot/lmtp:dovecot-lmtpd openssl:openssl ip:iproute2 python3:python3 \
    systemd-nspawn:systemd-container mmdebstrap:mmdebstrap nft:nftables \
    gcc:gcc /usr/bin/python3-config:python3-dev shellcheck:shellcheck; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "$cmd" ] || need+=("$pkg")
done
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  # The packages' postinst must not start machine-wide daemons (the lab's hosts bind
  # ports 25 and 993 on their own addresses): a policy-rc.d that denies every start,
  # only for this install, and Postfix left unconfigured.
  policy=/usr/sbin/policy-rc.d ours=
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; ours=1; fi
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if [ -n "$ours" ]; then rm -f "$policy"; fi
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
