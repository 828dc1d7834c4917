#!/usr/bin/env bash
# The lab demo on a fresh Debian machine, as root: installs what the lab needs,
# builds cmfleet, starts a lab of real sshd hosts, migrates it, and stops the lab.
# Extra arguments go to `cmfleet lab demo` (e.g. --relays 20 --keep).
set -euo pipefail
cd "$(dirname "$0")"
need=()
# Lab hosts run Debian's own Postfix and Dovecot (each in its mount namespace).
for pair in sshd:openssh-server rsync:rsync ssh-agent:openssh-client git:git python3:python3 unshare:util-linux \
    postfix:postfix dovecot:dovecot-imapd /usr/lib/dovecot/lmtp:dovecot-lmtpd openssl:openssl ip:iproute2; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "$cmd" ] || need+=("$pkg")
done
# --real-chatmail: Debian 12 containers (systemd-nspawn, a rootfs by mmdebstrap, NAT by
# nftables), chatmail's venv (gcc, python3-dev, python3-venv) and the lab's DNS (BIND).
case " $* " in *" --real-chatmail "*)
  for pair in named:bind9 tsig-keygen:bind9 dig:bind9-dnsutils systemd-nspawn:systemd-container mmdebstrap:mmdebstrap nft:nftables gcc:gcc /usr/bin/python3-config:python3-dev; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "$cmd" ] || need+=("$pkg")
  done
  /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
  ;;
esac
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  # No machine-wide daemons from the packages' postinst (see run-tests.sh).
  policy=/usr/sbin/policy-rc.d ours=
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; ours=1; fi
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if [ -n "$ours" ]; then rm -f "$policy"; fi
fi
cargo build --release --quiet
exec ./target/release/cmfleet lab demo "$@"
