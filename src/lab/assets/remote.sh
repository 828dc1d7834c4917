# The host side of the lab's stand-in cmdeploy, fed to `bash -s` over ssh.
set -euo pipefail
disable=$1 dry=$2 stages=$3 lab_dir=$4 args=$5
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

# A zombie counts as gone: the machine's init may be slow to reap.
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]; }

stop_listeners() {
    [ -f "$st/listener.pid" ] || return 0
    pid=$(cat "$st/listener.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 200); do alive "$pid" || break; sleep 0.02; done
    if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -f "$st/listener.pid"
}

start_listeners() {
    if [ -f "$st/listener.pid" ] && alive "$(cat "$st/listener.pid")"; then return 0; fi
    rm -f "$st/listener.pid"
    setsid /usr/local/sbin/chatmail-lab-listener "$addr" "$lab_dir" </dev/null >>"$st/listener.log" 2>&1 &
    for _ in $(seq 250); do [ -f "$st/listener.pid" ] && return 0; sleep 0.02; done
    echo "cmdeploy: listeners on $addr did not start: $(tail -n3 "$st/listener.log")" >&2
    exit 1
}

if [ "$disable" = 1 ]; then
    # The real one stops and disables postfix and dovecot, and nothing else.
    stop_listeners
    mail_disabled=1 active=0
    save
    echo "mail disabled on $addr (postfix, dovecot stopped)"
    exit 0
fi

for stage in ${stages//,/ }; do
    case $stage in
        install|configure)
            configured=1
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
            start_listeners
            active=1 mail_disabled=0
            ;;
    esac
    echo "stage $stage done on $addr"
done
save
