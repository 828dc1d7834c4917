#!/usr/bin/python3
# Lab stand-in for an active relay's postfix and dovecot: answers on ports 25, 465 and
# 993 of the host's own address with a greeting, so checks "is mail up?" are real.
# Started by the stand-in cmdeploy's activate stage; its PID is in
# /var/lib/chatmail-lab/listener.pid so --disable-mail and `cmfleet lab down` can stop it.
# argv: ADDRESS LAB_DIR (the lab dir only marks the process as this lab's).
import os
import selectors
import signal
import socket
import sys

addr = sys.argv[1]
greetings = {
    25: b"220 %s ESMTP chatmail-lab\r\n" % addr.encode(),
    465: b"220 %s ESMTP chatmail-lab (smtps)\r\n" % addr.encode(),
    993: b"* OK [CAPABILITY IMAP4rev1] chatmail-lab ready\r\n",
}
sel = selectors.DefaultSelector()
for port in greetings:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(128)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, port)

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
pidfile = "/var/lib/chatmail-lab/listener.pid"
with open(pidfile + ".tmp", "w") as f:
    f.write("%d\n" % os.getpid())
os.rename(pidfile + ".tmp", pidfile)

while True:
    for key, _ in sel.select():
        try:
            conn, _ = key.fileobj.accept()
            conn.sendall(greetings[key.data])
            conn.close()
        except OSError:
            pass
