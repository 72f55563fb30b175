#!/usr/bin/env python3
"""Measures the key store under the floods of docs/hardening.md ("Connections, bodies and
shutdown"): RSS (VmRSS of /proc/PID/status) while each runs, how many attacking connections are
still open after it, and the time to exit after SIGTERM with stalled clients.

    keystore/scripts/hostile_figures.py BINARY [extra key-store flags...]

Loopback only; every scenario starts its own key store (memory backend, token `tok`) and ends it.
Sized for a laptop: about a minute in all. The hostile-client tests (keystore/tests/it/hostile)
assert the same behaviour at CI scale.
"""
import json, os, signal, socket, subprocess, sys, time

BIN, EXTRA = sys.argv[1], sys.argv[2:]
TOK = "tok"


def start(*flags):
    p = subprocess.Popen([BIN, "--listen", "127.0.0.1:0", "--backend", "memory", *EXTRA, *flags],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, KEYSTORE_TOKEN=TOK, RUST_LOG="error"))
    health = None
    while True:
        line = p.stdout.readline().decode().strip()
        if line.startswith("health on "):
            health = int(line.rsplit(":", 1)[1])
        if line.startswith("listening on "):
            return p, int(line.rsplit(":", 1)[1]), health


def rss(p):
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) / 1024
    return 0.0


def conn(port, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def post(path, body, extra=""):
    return (f"POST /v1/{path} HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {TOK}\r\n"
            f"content-type: application/json\r\n{extra}content-length: {len(body)}\r\n\r\n").encode() + body


def answer(s, limit=1 << 16):
    buf = b""
    try:
        while len(buf) < limit:
            c = s.recv(65536)
            if not c:
                break
            buf += c
            if b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                cl = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
                if cl and len(rest) >= cl[0]:
                    break
    except OSError:
        pass
    return buf


def readyz(port, timeout=2.0):
    t = time.time()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.settimeout(timeout)
        s.sendall(b"GET /readyz HTTP/1.1\r\nhost: k\r\nconnection: close\r\n\r\n")
        a = answer(s)
        return f"{a[9:12].decode() or 'closed'} in {1000 * (time.time() - t):.0f} ms"
    except OSError as e:
        return f"failed ({e.__class__.__name__}) after {1000 * (time.time() - t):.0f} ms"


def still_open(socks):
    """Attacking connections the server has not closed: reads that would block, or an answer
    (408, 503) still being followed by an open socket, count as open."""
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            while True:
                c = s.recv(1 << 20)
                if not c:
                    break  # closed by the server
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def report(name, p, port, base, peak, socks, hold, health=None):
    print(f"{name}: RSS {base:.1f} -> {peak:.1f} MiB; after {hold:.0f} s {still_open(socks)}/{len(socks)} "
          f"attacking connections open; /readyz {readyz(health or port)}", flush=True)


def scenario(name, setup, hold=12.0, flags=()):
    p, port, health = start(*flags)
    base = rss(p)
    socks = setup(port)
    peak = base
    t = time.time()
    while time.time() - t < hold:
        peak = max(peak, rss(p))
        time.sleep(0.25)
    report(name, p, port, base, peak, socks, hold, health)
    for s in socks:
        s.close()
    p.kill()
    p.wait()


def slowloris(port, n=5000, seconds=3.0):
    socks = []
    for _ in range(n):
        s = conn(port)
        s.sendall(b"POST /v1/claim HTTP/1.1\r\nhost: k\r\nx-slow: ")
        socks.append(s)
    t = time.time()
    while time.time() - t < seconds:
        for s in socks:
            try:
                s.send(b"a")
            except OSError:
                pass
        time.sleep(0.2)
    return socks


def big_headers(port, n=1000):
    socks = []
    head = b"POST /v1/claim HTTP/1.1\r\nhost: k\r\nx-big: " + b"a" * 380_000
    for _ in range(n):
        s = conn(port)
        s.setblocking(False)
        try:
            s.send(head)
        except OSError:
            pass
        socks.append(s)
    return socks


def stalled_bodies(port, n=200):
    socks = []
    for _ in range(n):
        s = conn(port)
        head = (f"POST /v1/complete HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {TOK}\r\n"
                f"content-type: application/json\r\ncontent-length: 4000000\r\n\r\n").encode()
        s.sendall(head)
        s.setblocking(False)
        body = b"a" * 3_999_999
        while body:
            try:
                body = body[s.send(body):]
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                break
        socks.append(s)
    return socks


def non_reading(port, n=200):
    key, fp = "01" * 32, "02" * 32
    claim = json.dumps({"key": key, "fingerprint": fp, "lease_ms": 600000}).encode()
    s = conn(port)
    s.sendall(post("claim", claim))
    token = json.loads(answer(s).split(b"\r\n\r\n", 1)[1])["token"]
    s.close()
    record = "A" * (4 * 1024 * 1024)
    s = conn(port)
    s.sendall(post("complete", json.dumps({"key": key, "token": token, "record": record,
                                           "retention_ms": 600000}).encode()))
    answer(s)
    s.close()
    socks = []
    # The record comes back raw (the compact format, the filter's): the server's work is the
    # copy, not base64, so what is measured is what a deaf client holds.
    ask = post("claim", claim, "accept: application/vnd.idempotency.v1+postcard\r\n")
    for _ in range(n):
        s = conn(port, rcvbuf=4096)
        s.sendall(ask)
        socks.append(s)
    return socks


def batch_amplification(port, rounds=20):
    body = b'{"renewals":[' + b"{}," * ((4 * 1024 * 1024) // 3) + b"{}]}"
    times, statuses = [], set()
    for _ in range(rounds):
        t = time.time()
        s = conn(port)
        s.setblocking(True)
        try:
            s.sendall(post("renew-batch", body))
        except OSError:
            pass
        a = answer(s)
        statuses.add(a[9:12].decode())
        times.append(time.time() - t)
        s.close()
    return times, statuses


def sigterm_under_stall(flags=()):
    p, port, _ = start(*flags)
    a = conn(port)
    a.sendall(b"POST /v1/claim HTTP/1.1\r\nhost: k\r\nx-slow: a")
    b = conn(port)
    b.sendall((f"POST /v1/renew HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {TOK}\r\n"
               f"content-length: 1000\r\n\r\n{{").encode())
    c = conn(port)  # HTTP/2 prior knowledge, a HEADERS frame without END_HEADERS, then silence
    c.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
              + b"\x00\x00\x01\x01\x00\x00\x00\x00\x01" + b"\x83")
    time.sleep(0.3)
    t = time.time()
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=15)
        took = f"{time.time() - t:.3f} s"
    except subprocess.TimeoutExpired:
        took = "still running after 15 s (killed)"
        p.kill()
        p.wait()
    print(f"SIGTERM with 3 stalled clients (HTTP/1 mid-headers, mid-body, h2 mid-headers): exit {took}",
          flush=True)


if __name__ == "__main__":
    # ONLY=name,name runs some: slowloris, headers, bodies, deaf, batch, sigterm.
    only = set(filter(None, os.environ.get("ONLY", "").split(",")))
    run = lambda name: not only or name in only
    if run("slowloris"):
        scenario("5,000 connections sending headers a byte every 200 ms", slowloris)
    if run("headers"):
        scenario("1,000 connections holding 380 KB of unfinished header", big_headers)
    if run("bodies"):
        scenario("200 authenticated connections 1 byte short of a 4 MB body", stalled_bodies)
    if run("deaf"):
        scenario("200 clients not reading a 3 MiB record", non_reading)
    if not run("batch"):
        if run("sigterm"):
            sigterm_under_stall()
        sys.exit(0)
    p, port, _ = start()
    base = rss(p)
    times, statuses = batch_amplification(port)
    print(f"20 renew-batch bodies of 4 MiB of {{}}: answers {sorted(statuses)}, "
          f"median {1000 * sorted(times)[len(times) // 2]:.1f} ms each; RSS {base:.1f} -> {rss(p):.1f} MiB",
          flush=True)
    p.kill()
    p.wait()
    if run("sigterm"):
        sigterm_under_stall()
