# The host side of the lab's stand-in cmdeploy, fed to `bash -s` over ssh.
set -euo pipefail
# $4 is the lab's directory on the controller: the host side has no use for it;
# $6 is the website the run rendered.
disable=$1 dry=$2 stages=$3 args=$5 page=${6:-}
st=/var/lib/chatmail-lab
addr=$(echo "$SSH_CONNECTION" | cut -d' ' -f3)
mkdir -p "$st"
echo "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ) args=[$args] stages=$stages dry_run=$dry" >> "$st/invocations.log"
if [ "$dry" = 1 ]; then
    echo "dry run: nothing changed on $addr"
    exit 0
fi

get() { { sed -n "s/^$1=//p" "$st/state" 2>/dev/null || true; } | tail -n1; }
configured=$(get configured) mail_disabled=$(get mail_disabled) active=$(get active)
configured=${configured:-0} mail_disabled=${mail_disabled:-0} active=${active:-0}

save() {
    printf 'configured=%s\nmail_disabled=%s\nactive=%s\n' "$configured" "$mail_disabled" "$active" > "$st/state.tmp"
    mv "$st/state.tmp" "$st/state"
}

# The host's real Postfix and Dovecot (see chatmail-lab-mail). "fast" skips `postfix
# start`'s integrity checks: `lab up` activates every OLD host at once.
start_mail() {
    fast=
    [ "$args" = "lab up" ] && fast=fast
    /usr/local/sbin/chatmail-lab-mail start $fast || {
        echo "cmdeploy: postfix/dovecot on $addr did not start" >&2
        exit 1
    }
}

if [ "$disable" = 1 ]; then
    # The real one stops and disables postfix and dovecot, and nothing else. Disabled
    # here means the host's boot (start.sh) does not start them again.
    /usr/local/sbin/chatmail-lab-mail stop || exit 1
    mail_disabled=1 active=0
    save
    echo "mail disabled on $addr (postfix, dovecot stopped)"
    exit 0
fi

for stage in ${stages//,/ }; do
    case $stage in
        install|configure)
            # Like Debian's package scripts when the real one installs postfix and
            # dovecot: a fresh host's mail system starts right away (not recorded as
            # active: that is the activate stage's).
            if [ "$configured" != 1 ] && [ "$stage" = install ] && [ "$args" != "lab up" ]; then
                start_mail
            fi
            configured=1
            # The website the run rendered (the real one uploads www/build).
            if [ "$stage" = configure ] && [ -n "$page" ]; then
                mkdir -p "$st/www"
                printf '%s\n' "$page" > "$st/www/index.html"
            fi
            if [ "$stage" = configure ] && [ ! -e /etc/dkimkeys/opendkim.private ]; then
                # Like the real one: a fresh host gets a throwaway DKIM key, which the
                # final sync must overwrite with the old host's.
                echo "throwaway dkim key generated on $addr" > /etc/dkimkeys/opendkim.private
                chown opendkim:opendkim /etc/dkimkeys/opendkim.private
                chmod 600 /etc/dkimkeys/opendkim.private
            fi
            ;;
        activate)
            if [ "$configured" != 1 ]; then
                echo "cmdeploy: cannot activate $addr: not configured (run the install,configure stages first)" >&2
                exit 1
            fi
            start_mail
            active=1 mail_disabled=0
            ;;
    esac
    echo "stage $stage done on $addr"
done
save
