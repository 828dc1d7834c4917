#!/usr/bin/env python3
"""Delta Chat users for the real-chatmail night (deltachat-rpc-client, one core process).

Runs as a server of JSON lines: one request per line on stdin, one answer per line on
stdout ({"ok": ...} or {"error": "..."}), so the Rust test keeps the same accounts,
with their databases and connections, through the whole night. Accounts live in
ACCOUNTS_DIR (argv[1]). Names resolve through the system resolver: the test runs this
in a network namespace whose resolv.conf names the lab's BIND.

Requests ({"cmd": ..., ...}):
  add NAME ADDR PASSWORD       configure an account as a user does (chatmail makes it at
                               its first login); answers its transport settings
  join INVITER JOINER          SecureJoin: JOINER scans INVITER's QR code; waits until
                               both sides are done
  send FROM TO TEXT            (keys from, to, text) an encrypted message in FROM's chat with TO
  wait NAME TEXTS TIMEOUT      waits until every text is in NAME's chats; answers what
                               is missing at the timeout
  seen NAME TEXTS              marks those incoming messages seen (read)
  view NAME                    NAME's chats as Delta Chat shows them: per chat the
                               messages (text, state, padlock, error), the fresh count,
                               and the contacts' fingerprints
  net NAME                     what core cached about servers: dns_cache and
                               connection_history rows from the account's database
  offline NAME / online NAME   stop / start the account's IO, as a phone that is off
                               the network for a while
  connectivity NAME            every change of the account's connectivity (core's
                               1000 not connected, 2000 connecting, 3000 working,
                               4000 connected) since it was added: [unix time, value]
  events NAME SINCE            core's events for NAME since unix time SINCE, as lines
                               "TIME KIND TEXT" (the last EVENTS_KEPT are kept)
  nudge NAME                   wakes the cores' IMAP as a push notification wakes a
                               phone (see nudge()), if every online account is
                               connected; answers whether it did
  nudges                       every nudge so far: [unix time, NAME]

A thread samples every account's connectivity twice a second from the start, so the
test can say when each client lost its relay and when it had it back. A thread per
account keeps its core events (core's own log: what it sent, fetched, and why it
failed), so a step that runs out of time can say what the core did meanwhile.
"""

import collections
import json
import sqlite3
import sys
import threading
import time

from deltachat_rpc_client import DeltaChat, Rpc

accounts = {}
addrs = {}
# name -> [[unix time, connectivity]], one entry per change; the monitor appends.
changes = {}
changes_lock = threading.Lock()
# name -> deque of (unix time, kind, text): the account's last core events.
EVENTS_KEPT = 2000
events = {}
events_lock = threading.Lock()


def chats_of(acc):
    return [acc.get_chat_by_id(item.id) for item in acc.get_chatlist()]


def messages_of(acc):
    """Every message of every chat, as snapshots."""
    out = []
    for chat in chats_of(acc):
        for msg in chat.get_messages():
            out.append(msg.get_snapshot())
    return out


def add(name, addr, password):
    acc = dc.add_account()
    acc.set_config("displayname", name)
    acc.add_or_update_transport({"addr": addr, "password": password})
    with events_lock:
        events[name] = collections.deque(maxlen=EVENTS_KEPT)
    threading.Thread(target=keep_events, args=(name, acc), daemon=True).start()
    acc.start_io()
    accounts[name] = acc
    addrs[name] = addr
    return {"transports": [dict(t) for t in acc.list_transports()]}


# Accounts the test took off the network (offline); nudges wait for no one of them.
offline_names = set()
# [unix time, name] of every nudge.
nudges_done = []
# A join waits this long between nudges.
NUDGE_EVERY = 20


def nudge(name):
    """Wakes the cores' IMAP loops (core's maybe_network: they end IDLE and fetch), as the
    push notification a chatmail relay sends on delivery wakes a phone's app.

    Dovecot's IMAP hibernation (chatmail: 30 s into IDLE) loses a delivery that lands in
    the half second before a connection hibernates: the imap process delays its notice by
    500 ms and hibernates first, and the hibernated connection's watch starts after the
    delivery. The client is not told until its IDLE ends. Measured on a lab relay,
    deliveries 29.35-29.9 s into IDLE were missed 4 of 4 times; before and after, none of
    21 (docs/how-it-works.md). The night's waits and joins nudge an account that waited.

    Only while every online account is connected: one that is reconnecting would have its
    backoff cut short, and its outage would read shorter than a user's.
    """
    for other, acc in list(accounts.items()):
        if other not in offline_names and acc._rpc.get_connectivity(acc.id) < 3000:
            return {"nudged": False}
    dc.rpc.maybe_network()
    nudges_done.append([time.time(), name])
    return {"nudged": True}


def keep_events(name, acc):
    """Appends the account's core events to events[name] (runs forever)."""
    while True:
        e = acc.wait_for_event()
        kind = e.get("kind", "?")
        if kind == "ConnectivityChanged":  # the monitor records those
            continue
        text = e.get("msg") or {k: v for k, v in e.items() if k != "kind"}
        with events_lock:
            events[name].append((time.time(), kind, str(text)))


def events_since(name, since):
    with events_lock:
        return [f"{t:.3f} {k} {x}" for t, k, x in events.get(name, ()) if t >= since]


def join(inviter, joiner):
    a, b = accounts[inviter], accounts[joiner]
    start = time.time()
    qr = a.get_qr_code()
    b.secure_join(qr)
    deadline = start + 120
    nudged = start
    while time.time() < deadline:
        if time.time() - nudged >= NUDGE_EVERY and nudge(joiner)["nudged"]:
            nudged = time.time()
        contact = b.get_contact_by_addr(addrs[inviter])
        back = a.get_contact_by_addr(addrs[joiner])
        if contact is not None and back is not None:
            there = b.get_chat_by_contact(contact)
            here = a.get_chat_by_contact(back)
            if there is not None and here is not None and there.can_send() and here.can_send():
                return {"chat": there.id}
        time.sleep(0.5)
    # The joiner's whole story (its IO since it was added), the inviter's since the QR code.
    log = "".join(
        f"\n  {who}: {line}"
        for who, since in ((joiner, 0), (inviter, start))
        for line in events_since(who, since)
    )
    raise RuntimeError(f"{joiner} did not join {inviter} in 120 s; their core events:{log}")


def chat_with(acc, other):
    contact = acc.get_contact_by_addr(addrs[other])
    if contact is None:
        raise RuntimeError(f"no contact {addrs[other]}: make contact first (join)")
    return acc.get_chat_by_contact(contact) or contact.create_chat()


def send(sender, to, text):
    msg = chat_with(accounts[sender], to).send_text(text)
    return {"id": msg.id}


def wait(name, texts, timeout):
    acc = accounts[name]
    deadline = time.time() + float(timeout)
    while True:
        have = [m.text for m in messages_of(acc)]
        missing = [t for t in texts if t not in have]
        if not missing or time.time() >= deadline:
            return {"missing": missing}
        time.sleep(1)


def seen(name, texts):
    acc = accounts[name]
    msgs = []
    for chat in chats_of(acc):
        for msg in chat.get_messages():
            if msg.get_snapshot().text in texts:
                msgs.append(msg)
    acc.mark_seen_messages(msgs)
    return {"marked": len(msgs)}


def view(name):
    acc = accounts[name]
    chats = []
    for chat in chats_of(acc):
        snap = chat.get_basic_snapshot()
        contacts = []
        for contact in chat.get_contacts():
            c = contact.get_snapshot()
            # core 2.65 has no fingerprint field: its encryption info names the keys.
            # Special contacts (self, device: ids up to 9) have none.
            keys = contact.get_encryption_info() if c.id > 9 else None
            contacts.append({"addr": c.address, "keys": keys})
        messages = []
        for msg in chat.get_messages():
            m = msg.get_snapshot()
            messages.append(
                {
                    "text": m.text,
                    "state": m.state,
                    "padlock": m.show_padlock,
                    "error": m.error,
                    "info": m.is_info,
                    "from": m.from_id,
                }
            )
        chats.append(
            {
                "name": snap.name,
                "fresh": chat.get_fresh_message_count(),
                "contacts": contacts,
                "messages": messages,
            }
        )
    return {"chats": chats}


def net(name):
    acc = accounts[name]
    path = acc.get_info().get("database_dir")  # the database file itself
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = {}
    for table in ("dns_cache", "connection_history"):
        try:
            rows[table] = [list(r) for r in db.execute(f"SELECT * FROM {table}")]
        except sqlite3.Error as e:
            rows[table] = str(e)
    return rows


def monitor():
    """Samples each account's connectivity, recording changes (runs forever)."""
    last = {}
    while True:
        for name, acc in list(accounts.items()):
            try:
                value = acc._rpc.get_connectivity(acc.id)
            except Exception:  # the RPC is shutting down, or the account is new
                continue
            if last.get(name) != value:
                last[name] = value
                with changes_lock:
                    changes.setdefault(name, []).append([time.time(), value])
        time.sleep(0.5)


def offline(name):
    offline_names.add(name)
    accounts[name].stop_io()
    return {}


def online(name):
    accounts[name].start_io()
    offline_names.discard(name)
    return {}


def connectivity(name):
    with changes_lock:
        return {"changes": list(changes.get(name, []))}


def events_of(name, since):
    return {"lines": events_since(name, float(since))}


COMMANDS = {
    "add": add,
    "join": join,
    "send": send,
    "wait": wait,
    "seen": seen,
    "view": view,
    "net": net,
    "offline": offline,
    "online": online,
    "connectivity": connectivity,
    "events": events_of,
    "nudge": nudge,
    "nudges": lambda: {"nudges": list(nudges_done)},
}

if __name__ == "__main__":
    with Rpc(accounts_dir=sys.argv[1]) as rpc:
        dc = DeltaChat(rpc)
        threading.Thread(target=monitor, daemon=True).start()
        print(json.dumps({"ok": "ready"}), flush=True)
        for line in sys.stdin:
            req = json.loads(line)
            cmd = req.pop("cmd")
            if "from" in req:  # a Python keyword
                req["sender"] = req.pop("from")
            try:
                answer = {"ok": COMMANDS[cmd](**req)}
            except Exception as e:  # the test reads the reason
                answer = {"error": f"{cmd}: {type(e).__name__}: {e}"}
            print(json.dumps(answer, default=str), flush=True)
