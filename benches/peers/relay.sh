#!/bin/bash
# relay.sh PHASE OLD NEW CHECKOUT -- the guide's six steps for one relay, verbatim (DNS
# step 5 skipped: the lab has no DNS), adapted from ../shared/peers/relay.sh to the lab:
# ssh goes through the lab's ssh_config, cmdeploy is the lab's stand-in run from this
# relay's own copy of the checkout (CHECKOUT, with its chatmail.ini; concurrent runs from
# one checkout race, see DESIGN.md), and the run is split in two phases so the benchmark
# can apply the same mail activity to every contender between them:
#   pre: steps 1-2 (no downtime)   cut: steps 3, 4, 6 (the downtime)   all: both
#   final: only step 4's mailbox rsync, mirroring (--delete), no chown: "the final rsync
#          alone", the floor step 4 is measured against (issue 27; contender final-rsync)
# The benchmark runs `xargs -P N -L 1 relay.sh PHASE < relays.txt` for each phase.
set -e
PHASE=$1 OLD=$2 NEW=$3 CO=$4
cd $CO
ssh() { command ssh -F ${BENCH:-.}/ssh_config "$@"; }
now() { date +%s%3N; }
if [ $PHASE = pre ] || [ $PHASE = all ]; then
# 1
ssh -A root@$OLD "tar c /home/vmail/mail | ssh root@$NEW \"tar x -C /\""
# 2
CMDEPLOY_STAGES=install,configure scripts/cmdeploy run --ssh-host $NEW
fi
if [ $PHASE = final ]; then
t4=$(now)
ssh -A root@$OLD "rsync -aH --delete /home/vmail/mail/ root@$NEW:/home/vmail/mail/"
t=$(now)
echo "$OLD $t4 $t $t" >> ${BENCH:-.}/peers/step4.txt
fi
if [ $PHASE = cut ] || [ $PHASE = all ]; then
t3=$(now)
# 3
scripts/cmdeploy run --disable-mail --ssh-host $OLD
# 4
t4=$(now)
ssh -A root@$OLD "tar c /var/lib/acme /etc/dkimkeys /var/spool/postfix | ssh root@$NEW \"tar x -C /\" && rsync -azH /home/vmail/mail root@$NEW:/home/vmail/"
t4s=$(now)
ssh root@$NEW "chown root: -R /var/lib/acme; chown opendkim: -R /etc/dkimkeys; chown vmail: -R /home/vmail/mail"
# step 4's parts (start, copies done, chown done), for the benchmark
echo "$OLD $t4 $t4s $(now)" >> ${BENCH:-.}/peers/step4.txt
# 6
CMDEPLOY_STAGES=activate scripts/cmdeploy run --ssh-host $NEW
# downtime of this relay (step 3 start -> step 6 end), for the benchmark
echo "$OLD $t3 $(now)" >> ${BENCH:-.}/peers/downtime.txt
fi
echo "relay $OLD -> $NEW $PHASE ok"
