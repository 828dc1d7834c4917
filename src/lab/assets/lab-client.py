#!/usr/bin/python3
# A mail client for the cmfleet lab (Python's smtplib and imaplib against the lab hosts'
# real Postfix and Dovecot). Reads a JSON request on stdin, writes JSON on stdout;
# exits 1 with the reason on stderr.
#
#   seed      lab up: send mail over SMTP to some accounts of each OLD host, wait until
#             Dovecot has it, mark some of it read and flagged over IMAP, and queue mail
#             for a destination that is down (Postfix defers it).
#             {"hosts": [{"addr", "domain", "spool", "accounts": [[address, password,
#               messages already in the maildir]], "messages", "imap_accounts",
#               "deferred", "later"}],
#              "timeout"}
#   snapshot  a client's view of accounts: per mailbox UIDVALIDITY, UIDNEXT and each
#             message's UID, flags and content digest.
#             {"host", "accounts": [[address, password]]}
#             -> {address: {mailbox: {"uidvalidity", "uidnext", "messages":
#                 [[uid, [flags], sha256]]}}}
#   send      {"host", "port", "from", "to", "subject", "body"}: one message over SMTP.
#   flag      {"host", "address", "password", "flags"}: a client opens the INBOX and adds
#             FLAGS (e.g. "(\\Flagged)") to its newest message; -> {"uid"}
import hashlib
import imaplib
import json
import os
import re
import smtplib
import sys
import threading
import time

SMTP_TIMEOUT = 20


def message(frm, to, subject, body):
    return (
        f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{hashlib.sha1((frm + to + subject + body).encode()).hexdigest()}@lab>\r\n"
        f"\r\n{body}\r\n"
    )


def imap(host, address, password):
    m = imaplib.IMAP4(host, 143, timeout=SMTP_TIMEOUT)
    m.login(address, password)
    return m


def count_files(root):
    n = 0
    for _, _, files in os.walk(root):
        n += len(files)
    return n


def seed_host(h, deadline, errors):
    try:
        addr, domain = h["addr"], h["domain"]
        with smtplib.SMTP(addr, 25, local_hostname="lab-client", timeout=SMTP_TIMEOUT) as s:
            for address, _, _ in h["accounts"]:
                for i in range(h["messages"]):
                    frm = f"lab-sender{i}@{domain}"
                    s.sendmail(frm, [address], message(frm, address, f"over smtp {i}", f"hello {address} #{i}"))
            first = h["accounts"][0][0] if h["accounts"] else f"postmaster@{domain}"
            for i in range(h["deferred"]):
                to = f"friend{i}@{h['later']}"
                s.sendmail(first, [to], message(first, to, f"deferred {i}", f"waits in {domain}'s queue"))
        for n, (address, password, before) in enumerate(h["accounts"]):
            want = before + h["messages"]
            m = imap(addr, address, password)
            try:
                while True:
                    st = m.status("INBOX", "(MESSAGES)")[1][0].decode()
                    have = int(re.search(r"MESSAGES (\d+)", st).group(1))
                    if have >= want:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{address} on {addr}: {have} of {want} messages arrived")
                    time.sleep(0.05)
                if n >= h["imap_accounts"]:
                    continue
                # A client opens the INBOX (Dovecot moves new/ to cur/), the user reads
                # one of the newest messages (they came over SMTP) and flags another.
                m.select("INBOX")
                uids = m.uid("SEARCH", None, "ALL")[1][0].split()
                if len(uids) >= 1:
                    m.uid("STORE", uids[-1], "+FLAGS", "(\\Seen)")
                if len(uids) >= 2:
                    m.uid("STORE", uids[-2], "+FLAGS", "(\\Seen \\Flagged)")
            finally:
                m.logout()
        deferred = os.path.join(h["spool"], "deferred")
        while count_files(deferred) < h["deferred"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{addr}: {count_files(deferred)} of {h['deferred']} messages deferred")
            time.sleep(0.05)
    except Exception as e:  # reported for the host, all hosts are tried
        errors.append(f"{h['addr']}: {type(e).__name__}: {e}")


def seed(req):
    deadline = time.monotonic() + req.get("timeout", 60)
    errors = []
    threads = [threading.Thread(target=seed_host, args=(h, deadline, errors)) for h in req["hosts"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(sorted(errors)))
    return {"hosts": len(req["hosts"])}


def mailbox_names(m):
    names = []
    for line in m.list()[1]:
        line = line.decode()
        # (\HasNoChildren) "." INBOX   or   ... "." "Name with space"
        name = re.match(r'\(.*?\) (?:"[^"]*"|NIL) (.*)$', line).group(1)
        names.append(name.strip('"'))
    return sorted(names)


def snapshot(req):
    out = {}
    for address, password in req["accounts"]:
        m = imap(req["host"], address, password)
        boxes = {}
        try:
            for name in mailbox_names(m):
                typ, _ = m.select(f'"{name}"', readonly=True)
                if typ != "OK":
                    continue
                uidvalidity = int(m.response("UIDVALIDITY")[1][0])
                uidnext = int(m.response("UIDNEXT")[1][0])
                msgs = []
                typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
                for item in data:
                    if not isinstance(item, tuple):
                        continue
                    head = item[0].decode()
                    uid = int(re.search(r"UID (\d+)", head).group(1))
                    flags = sorted(f for f in re.search(r"FLAGS \(([^)]*)\)", head).group(1).split() if f != "\\Recent")
                    msgs.append([uid, flags, hashlib.sha256(item[1]).hexdigest()])
                msgs.sort()
                boxes[name] = {"uidvalidity": uidvalidity, "uidnext": uidnext, "messages": msgs}
        finally:
            m.logout()
        out[address] = boxes
    return out


def send(req):
    with smtplib.SMTP(req["host"], req.get("port", 25), local_hostname="lab-client", timeout=SMTP_TIMEOUT) as s:
        s.sendmail(req["from"], [req["to"]], message(req["from"], req["to"], req["subject"], req["body"]))
    return {"sent": 1}


def flag(req):
    m = imap(req["host"], req["address"], req["password"])
    try:
        m.select("INBOX")
        uid = m.uid("SEARCH", None, "ALL")[1][0].split()[-1]
        m.uid("STORE", uid, "+FLAGS", req["flags"])
    finally:
        m.logout()
    return {"uid": int(uid)}


def main():
    cmds = {"seed": seed, "snapshot": snapshot, "send": send, "flag": flag}
    if len(sys.argv) != 2 or sys.argv[1] not in cmds:
        print("usage: lab-client seed|snapshot|send|flag < request.json", file=sys.stderr)
        return 2
    try:
        result = cmds[sys.argv[1]](json.load(sys.stdin))
    except Exception as e:
        print(f"lab-client {sys.argv[1]}: {e}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
