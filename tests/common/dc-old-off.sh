#!/bin/sh
# The pre_cutover hook of the Delta Chat nights (tests/common/dc_night.rs), run by
# cmfleet on the controller at the start of step 3 of every relay.
#
# For the relay named in $1 only, OLD is "switched off" for the Delta Chat clients from
# then on: their network namespace ($2) drops every connection attempt to OLD's address,
# as a machine that is off answers nothing. The other relays' OLDs refuse connections,
# as stopped services do. cmfleet's own connections (from the controller) are untouched.
set -eu
[ "$CMFLEET_RELAY" = "$1" ] || exit 0
ip netns exec "$2" nft -f - <<NFT
table ip dc_old_off {
  chain out {
    type filter hook output priority 0; policy accept;
    ip daddr $CMFLEET_OLD_IP4 tcp flags & (syn | ack) == syn drop
  }
}
NFT
echo "OLD ($CMFLEET_OLD_IP4) now drops the clients' connection attempts"
