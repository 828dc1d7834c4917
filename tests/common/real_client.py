#!/usr/bin/env python3
"""A chatmail user, as the real-chatmail lab tests need one (standard library only).

  real_client.py login ADDR HOST PASSWORD
      IMAPS login on HOST:993; chatmail's doveauth creates the account on its first login.
  real_client.py send FROM HOST PASSWORD TO SUBJECT
      submits over SMTPS HOST:465 a SecureJoin request (the one kind of unencrypted
      mail chatmail's filtermail lets through), so it takes the relay's real path:
      postfix, filtermail, opendkim, postfix, dovecot (or the queue, for another relay).
      Prints the message's Message-ID.
  real_client.py mark ADDR HOST PASSWORD
      reads and flags as a user would: the first message \\Seen, the last \\Flagged
      (over IMAP, so dovecot renames the maildir files: the flags live in their names).
  real_client.py view ADDR HOST PASSWORD
      prints the account's INBOX as JSON: UIDVALIDITY, UIDNEXT and every message's UID,
      Message-ID and flags.

The relays' certificates are self-signed (a mail_domain starting with `_`): not verified.
"""

import email.message
import email.utils
import imaplib
import json
import re
import smtplib
import ssl
import sys


def context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def imap(host, addr, password):
    conn = imaplib.IMAP4_SSL(host, 993, ssl_context=context(), timeout=30)
    conn.login(addr, password)
    return conn


def login(addr, host, password):
    conn = imap(host, addr, password)
    conn.logout()


def send(sender, host, password, to, subject):
    msg = email.message.EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Secure-Join"] = "vc-request"
    msg["Message-ID"] = email.utils.make_msgid(domain=sender.split("@")[1])
    msg.set_content("secure-join: vc-request")
    # filtermail wants a multipart whose one part is the text: make it one.
    msg.make_mixed()
    with smtplib.SMTP_SSL(host, 465, context=context(), timeout=30) as smtp:
        smtp.login(sender, password)
        smtp.send_message(msg)
    print(msg["Message-ID"])


def mark(addr, host, password):
    conn = imap(host, addr, password)
    conn.select("INBOX")
    typ, data = conn.uid("SEARCH", None, "ALL")
    uids = data[0].split()
    if not uids:
        raise SystemExit(f"{addr}: nothing to mark in INBOX")
    conn.uid("STORE", uids[0], "+FLAGS", "(\\Seen)")
    conn.uid("STORE", uids[-1], "+FLAGS", "(\\Flagged)")
    conn.logout()


def view(addr, host, password):
    conn = imap(host, addr, password)
    typ, data = conn.status("INBOX", "(UIDVALIDITY UIDNEXT MESSAGES)")
    status = data[0].decode()
    fields = dict(re.findall(r"(UIDVALIDITY|UIDNEXT|MESSAGES) (\d+)", status))
    conn.select("INBOX", readonly=True)
    typ, data = conn.uid(
        "FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
    )
    messages = []
    for item in data:
        if not isinstance(item, tuple):
            continue
        uid = re.search(rb"UID (\d+)", item[0])
        flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
        subject = item[1].decode(errors="replace").strip()
        messages.append(
            {
                "uid": int(uid.group(1)) if uid else None,
                "message_id": subject,
                # \Recent belongs to a session, not to the message: left out.
                "flags": sorted(
                    f for f in (flags.group(1).decode().split() if flags else [])
                    if f != "\\Recent"
                ),
            }
        )
    conn.logout()
    print(
        json.dumps(
            {
                "uidvalidity": int(fields.get("UIDVALIDITY", 0)),
                "uidnext": int(fields.get("UIDNEXT", 0)),
                "messages": sorted(messages, key=lambda m: m["uid"] or 0),
            },
            sort_keys=True,
        )
    )


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"login": login, "send": send, "mark": mark, "view": view}[cmd](*args)


if __name__ == "__main__":
    main()
