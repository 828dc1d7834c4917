#!/bin/sh
# cmfleet `command` DNS hook for a provider CLI (here: a generic `dnsctl`; adapt the
# four calls to your provider's CLI or API, e.g. hcloud, doctl, a curl call).
#
# cmfleet runs this program without arguments and without a shell; everything comes
# in the environment:
#   CMFLEET_ACTION   switch | lower-ttl | restore-ttl | rollback
#   CMFLEET_DOMAIN   the relay's mail_domain (the A/AAAA records' name)
#   CMFLEET_OLD_IP4, CMFLEET_OLD_IP6   the old machine's addresses (IP6 may be empty)
#   CMFLEET_NEW_IP4, CMFLEET_NEW_IP6   the new machine's addresses (IP6 may be empty)
#   CMFLEET_TTL      the TTL to set
# Exit 0 when done, 75 (EX_TEMPFAIL) to have cmfleet retry later (rate limits,
# timeouts), anything else for a failure; stderr's tail ends up in the report.
set -eu

zone=${CMFLEET_DOMAIN#*.}
name=${CMFLEET_DOMAIN%%."$zone"}

set_records() { # ip4 ip6
    dnsctl record set --zone "$zone" --name "$name" --type A --ttl "$CMFLEET_TTL" "$1" || exit 75
    if [ -n "$2" ]; then
        dnsctl record set --zone "$zone" --name "$name" --type AAAA --ttl "$CMFLEET_TTL" "$2" || exit 75
    else
        dnsctl record delete --zone "$zone" --name "$name" --type AAAA --if-exists || exit 75
    fi
}

case $CMFLEET_ACTION in
    switch)              set_records "$CMFLEET_NEW_IP4" "${CMFLEET_NEW_IP6:-}" ;;
    rollback)            set_records "$CMFLEET_OLD_IP4" "${CMFLEET_OLD_IP6:-}" ;;
    lower-ttl)           set_records "$CMFLEET_OLD_IP4" "${CMFLEET_OLD_IP6:-}" ;;
    restore-ttl)         dnsctl record set-ttl --zone "$zone" --name "$name" --ttl "$CMFLEET_TTL" || exit 75 ;;
    *) echo "dns-hook: unknown action $CMFLEET_ACTION" >&2; exit 64 ;;
esac
