#!/bin/bash
# Fault injection for tests/deltachat_mutations.rs: installed as scripts/cmdeploy in
# the lab's chatmail checkout (chatmail's own script renamed to cmdeploy-unmutated,
# which this one then runs with the same arguments, unchanged).
#
# Before the Nth activate-only run (step 6: NEW is about to serve), it breaks NEW as
# line N of DIR/plan says, as if step 4 had left something out:
#   uidlists  Dovecot's uidlists and indexes removed: every mailbox gets a new
#             UIDVALIDITY and new UIDs
#   dkim      a new DKIM key of NEW's own in place of OLD's
#   queue     Postfix's queue emptied (OLD's deferred mail dropped)
#   none      nothing
# and appends "WHAT NEW-ADDRESS WHAT-IT-DID" to DIR/log. DIR is written in by the test
# (@MUTATIONS@ below); DIR/ssh_config reaches the lab's hosts.
set -eu
dir='@MUTATIONS@'
if [ "${CMDEPLOY_STAGES:-}" = activate ]; then
    host=
    prev=
    for a in "$@"; do
        if [ "$prev" = --ssh-host ]; then host=$a; fi
        prev=$a
    done
    exec 9>>"$dir/lock"
    flock 9
    touch "$dir/log"
    n=$(($(wc -l <"$dir/log") + 1))
    what=$(sed -n "${n}p" "$dir/plan")
    # shellcheck disable=SC2016 # the remote commands expand on NEW, not here
    case $what in
    uidlists)
        remote='find /home/vmail/mail \( -name dovecot-uidlist -o -name "dovecot*index*" -o -name "dovecot-uidvalidity*" \) -print -delete | wc -l | sed "s/\$/ uidlist and index files removed/"'
        ;;
    dkim)
        remote='d=$(mktemp -d) && opendkim-genkey -b 2048 -D "$d" -s opendkim && cat "$d/opendkim.private" >/etc/dkimkeys/opendkim.private && rm -r "$d" && echo "a new DKIM key in place of OLD'"'"'s"'
        ;;
    queue)
        remote='postsuper -d ALL 2>&1 | tr "\n" " "; echo'
        ;;
    *)
        what=none
        remote='echo nothing'
        ;;
    esac
    if ! did=$(ssh -F "$dir/ssh_config" -l root "$host" -- "$remote" 2>&1); then
        echo "the $what mutation failed on $host: $did" >&2
        exit 1
    fi
    printf '%s %s %s\n' "$what" "$host" "$(printf '%s' "$did" | tr '\n' ' ')" >>"$dir/log"
    exec 9>&-
fi
exec "$(dirname "$0")/cmdeploy-unmutated" "$@"
