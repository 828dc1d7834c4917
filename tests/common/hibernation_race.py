#!/usr/bin/env python3
"""Does a chatmail relay's IDLE miss a delivery that lands as the connection hibernates?

usage: hibernation_race.py SSH_CONFIG HOST IP DOMAIN OFFSET...
   e.g. cmfleet lab up --real-chatmail --relays 1 --dir /tmp/hib/lab, then
        hibernation_race.py /tmp/hib/lab/ssh_config relay1-old 198.18.1.2 \
            _relay1.lab.example 20 29.5 29.7 29.9 40

One trial per OFFSET, side by side: a new account logs in over IMAP, SELECTs INBOX and
IDLEs; OFFSET seconds after "+ idling" a message is saved into its INBOX on the relay
(doveadm save over ssh). The trial prints when EXISTS came, or MISSED if it did not in
15 s, and then whether ending IDLE (DONE, what a woken client does) brings it.
chatmail hibernates IDLE connections after 30 s (imap_hibernate_timeout); Dovecot's
imap process delays a mailbox notice by 500 ms. Why the Delta Chat nights nudge:
docs/how-it-works.md.
"""
import socket
import ssl
import subprocess
import sys
import threading
import time

ssh_config, host, ip, domain = sys.argv[1:5]
offsets = [float(x) for x in sys.argv[5:]]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
results = []
lock = threading.Lock()


def trial(n, offset):
    addr = f"hb{n % 10000000:07d}@{domain}"
    s = ctx.wrap_socket(socket.create_connection((ip, 993)), server_hostname=domain)
    f = s.makefile("rwb", buffering=0)

    def cmd(tag, line):
        f.write(f"{tag} {line}\r\n".encode())
        while True:
            r = f.readline().decode()
            if r.startswith(tag + " "):
                return r

    f.readline()
    cmd("a1", f'LOGIN "{addr}" "hb-password-{n % 10000000}-long"')
    cmd("a2", "SELECT INBOX")
    f.write(b"a3 IDLE\r\n")
    while not f.readline().startswith(b"+"):
        pass
    t0 = time.time()
    time.sleep(max(0.0, offset - 0.15))  # ssh takes about that
    before = time.time() - t0
    subprocess.run(
        ["ssh", "-F", ssh_config, host,
         f"printf 'Subject: t\\n\\nhello\\n' | doveadm save -u {addr} -m INBOX"],
        check=True,
    )
    after = time.time() - t0
    s.settimeout(15)
    got = None
    try:
        while True:
            line = f.readline().decode()
            if not line:
                got = "closed"
                break
            if "EXISTS" in line:
                got = round(time.time() - t0 - after, 2)
                break
    except socket.timeout:
        got = "MISSED"
        # What ending IDLE (as core does when woken) brings.
        s.settimeout(10)
        f = s.makefile("rwb", buffering=0)
        f.write(b"DONE\r\n")
        while True:
            line = f.readline().decode()
            if "EXISTS" in line:
                got = "MISSED, EXISTS after DONE"
            if line.startswith("a3 ") or not line:
                break
    with lock:
        results.append((offset, round(before, 2), round(after, 2), got))
        print(f"offset {offset:5.2f}: saved at {before:.2f}-{after:.2f} s, EXISTS: {got}", flush=True)
    try:
        s.close()
    except OSError:
        pass


threads = []
for i, off in enumerate(offsets):
    t = threading.Thread(target=trial, args=(int(time.time()) % 100000 * 100 + i, off))
    t.start()
    threads.append(t)
    time.sleep(0.3)
for t in threads:
    t.join()
missed = [r for r in results if str(r[3]).startswith("MISSED")]
print(f"{len(missed)} of {len(results)} missed: {sorted(r[0] for r in missed)}")
