"""The chaos run's clients (standard library only).

Each client is a thread with one caller identity (`Authorization: Bearer <caller>`). It performs logical
operations one after the other: a payment with a key of its own (a fresh UUID; now and then the key another
caller used last, so that two callers share a key string), whose JSON body names the operation, the caller
and the key, so the upstream's list of payments tells which operation each execution belongs to.

An operation retries as the common client libraries do: an attempt that times out (CLIENT_TIMEOUT_S), loses
its connection, or gets 409, 429 or a 5xx is sent again, after Retry-After (409, 429) or an exponential
backoff with jitter, to the other gateway after a failure; 2xx and the other 4xx (400, 410, 422) end the
operation, and so do MAX_ATTEMPTS attempts or OP_BUDGET_S seconds.

The workload brings faults of its own on an operation's first attempt (the retries are clean; these headers
are not part of the fingerprint), through the payments demo's test knobs:
  slow   x-demo-delay-ms, 300 to 3000 ms: the client's 2 s timeout ends some attempts before the upstream does
  reset  x-demo-reset: after-work: the payment is made, the connection is reset without an answer
  cut    x-demo-body-cut: the payment is made, the answer's body is cut
  5xx    x-demo-status: 503: the upstream answers 503 and makes no payment
Most operations use the route with `unknown_outcome: "lock"` (POST /payments), the others the one with
`"release"` (POST /release/payments) or the one with `execution: "detached"` (POST /detached/payments, exactly
once too): the nemesis's kills then find requests of both exactly-once kinds at the upstream.

Every operation is one JSON line of the history (see `Op.record`); every attempt keeps its gateway, start and
end (Unix time, seconds), status or error, the `idempotent-replayed` flag, the problem type, the SHA-256 of
the body and the body itself when it is short.

Seeded: each client's plan (route, knob, key sharing, think time) comes from its own random generator seeded
from the run's seed; retry timing and gateway choice from another, so a replay with the same seed runs the
same operations, though not the same interleaving with the faults.
"""

import hashlib
import http.client
import json
import random
import socket
import threading
import time
import uuid

HOST = "127.0.0.1"
CALLERS = ("alice", "bob", "carol")
ROUTES = {"lock": "/payments", "release": "/release/payments", "detached": "/detached/payments"}
RELEASE_SHARE = 0.2
DETACHED_SHARE = 0.25
SHARED_KEY_SHARE = 0.1
KNOBS = (  # (name, share of operations)
    ("slow", 0.15),
    ("reset", 0.07),
    ("cut", 0.06),
    ("5xx", 0.06),
)
SLOW_MS = (300, 3000)  # x-demo-delay-ms of the `slow` knob
CLIENT_TIMEOUT_S = 2.0
MAX_ATTEMPTS = 12
OP_BUDGET_S = 15.0
RETRY_STATUS = {409, 429, 500, 502, 503, 504}
BODY_KEPT = 4096


def knob_headers(knob, value):
    if knob == "slow":
        return {"x-demo-delay-ms": str(value)}
    if knob == "reset":
        return {"x-demo-reset": "after-work"}
    if knob == "cut":
        return {"x-demo-body-cut": str(value)}
    if knob == "5xx":
        return {"x-demo-status": "503"}
    return {}


def attempt(gateway, port, path, headers, body, timeout=CLIENT_TIMEOUT_S):
    """One HTTP attempt; never raises. The record says what the client saw."""
    rec = {"gateway": gateway, "start": time.time()}
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        rec["status"] = resp.status
        rec["replayed"] = resp.getheader("idempotent-replayed") == "true"
        if resp.getheader("retry-after"):
            rec["retry_after"] = resp.getheader("retry-after")
        data = resp.read()
        rec["body_sha256"] = hashlib.sha256(data).hexdigest()
        if len(data) <= BODY_KEPT:
            rec["body"] = data.decode("utf-8", "replace")
        if (resp.getheader("content-type") or "").startswith("application/problem+json"):
            try:
                rec["problem"] = json.loads(data).get("type", "").rsplit(":", 1)[-1]
            except ValueError:
                rec["problem"] = "unreadable"
    except (socket.timeout, TimeoutError):
        rec["error"] = "timeout"
    except ConnectionRefusedError:
        rec["error"] = "refused"
    except http.client.IncompleteRead:
        rec["error"] = "incomplete"
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        rec["error"] = "reset"
    except (OSError, http.client.HTTPException) as e:
        rec["error"] = f"other: {type(e).__name__}: {e}"
    finally:
        conn.close()
        rec["end"] = time.time()
    # A status line without its whole body (a cut answer) is no answer: the client cannot use it.
    if "error" in rec and "status" in rec:
        rec["partial_status"] = rec.pop("status")
    return rec


class History:
    """The history file: one JSON line per operation, appended as operations end."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="utf-8")
        self.count = 0

    def write(self, record):
        line = json.dumps(record, sort_keys=True)
        with self.lock:
            self.file.write(line + "\n")
            self.file.flush()
            self.count += 1

    def close(self):
        with self.lock:
            self.file.close()


class Op:
    """One logical operation: a payment with one key, and its attempts."""

    def __init__(self, op_id, client, caller, key, route, amount, knob=None, knob_value=None, phase="run"):
        self.op_id, self.client, self.caller, self.key = op_id, client, caller, key
        self.route, self.amount, self.knob, self.knob_value, self.phase = route, amount, knob, knob_value, phase
        self.attempts = []
        self.result = None

    @property
    def body(self):
        return json.dumps({"op": self.op_id, "caller": self.caller, "key": self.key, "amount": self.amount},
                          sort_keys=True).encode()

    def headers(self, first):
        h = {
            "authorization": f"Bearer {self.caller}",
            "idempotency-key": f'"{self.key}"',
            "content-type": "application/json",
        }
        if first:
            h.update(knob_headers(self.knob, self.knob_value))
        return h

    def record(self):
        return {
            "op": self.op_id, "client": self.client, "caller": self.caller, "key": self.key,
            "route": self.route, "path": ROUTES[self.route], "amount": self.amount, "knob": self.knob,
            "knob_value": self.knob_value, "phase": self.phase, "attempts": self.attempts, "result": self.result,
        }


def result_of(last):
    if last is None:
        return "not-sent"
    status = last.get("status")
    if status is None:
        return "gave-up"
    if 200 <= status < 300:
        return "ok"
    if status == 410 and last.get("problem") == "outcome-unknown":
        return "unknown"
    if status in RETRY_STATUS:
        return "gave-up"
    return f"refused-{status}"


def perform(op, gateways, rng, budget_s=OP_BUDGET_S, max_attempts=MAX_ATTEMPTS, retry=True):
    """Runs op's attempts as a retrying client would; fills op.attempts and op.result."""
    names = sorted(gateways)
    deadline = time.time() + budget_s
    gateway = rng.choice(names)
    for n in range(max_attempts):
        a = attempt(gateway, gateways[gateway], ROUTES[op.route], op.headers(first=(n == 0)), op.body)
        op.attempts.append(a)
        status = a.get("status")
        if not retry or (status is not None and status not in RETRY_STATUS):
            break
        if status in (409, 429) and a.get("retry_after", "").isdigit():
            delay = min(float(a["retry_after"]), 2.0) * rng.uniform(0.5, 1.0)
        else:
            delay = min(0.1 * 2 ** n, 2.0) * rng.uniform(0.5, 1.0)
        if status is None or status >= 500:
            gateway = [g for g in names if g != gateway][0] if len(names) > 1 else gateway
        else:
            gateway = rng.choice(names)
        if time.time() + delay > deadline:
            break
        time.sleep(delay)
    op.result = result_of(op.attempts[-1] if op.attempts else None)
    return op


class Keys:
    """The key each caller used last, for operations that share a key string with another caller. A caller
    never takes a key it used already (several clients have the same caller): each (caller, key) pair belongs
    to one operation, whose request is always the same."""

    def __init__(self):
        self.lock = threading.Lock()
        self.last = {}
        self.used = set()

    def take(self, caller, fresh, share, pick):
        """The key of a new operation of `caller`: another caller's last key when `share` and one is free to
        take, else `fresh`."""
        with self.lock:
            key = fresh
            if share:
                others = sorted((c, k) for c, k in self.last.items() if c != caller and (caller, k) not in self.used)
                if others:
                    key = pick(others)[1]
            self.used.add((caller, key))
            self.last[caller] = key
            return key


class Client(threading.Thread):
    def __init__(self, index, seed, gateways, history, stop, keys):
        super().__init__(name=f"client-{index}", daemon=True)
        self.index = index
        self.caller = CALLERS[index % len(CALLERS)]
        self.plan = random.Random(f"{seed}/plan/{index}")
        self.retry = random.Random(f"{seed}/retry/{index}")
        self.gateways, self.history, self.stop, self.keys = gateways, history, stop, keys
        self.ops = 0

    def next_op(self):
        p = self.plan
        self.ops += 1
        op_id = f"c{self.index}-{self.ops:05d}"
        roll = p.random()
        route = "release" if roll < RELEASE_SHARE else "detached" if roll < RELEASE_SHARE + DETACHED_SHARE else "lock"
        share = p.random() < SHARED_KEY_SHARE
        key = self.keys.take(self.caller, str(uuid.UUID(int=p.getrandbits(128), version=4)), share, p.choice)
        knob, value, roll = None, None, p.random()
        for name, share_of in KNOBS:
            if roll < share_of:
                knob = name
                break
            roll -= share_of
        if knob == "slow":
            value = p.randrange(SLOW_MS[0], SLOW_MS[1] + 1, 100)
        elif knob == "cut":
            value = p.randrange(1, 40)
        amount = p.randrange(1, 100_000)
        think = p.uniform(0.02, 0.15)
        return Op(op_id, self.index, self.caller, key, route, amount, knob, value), think

    def run(self):
        while not self.stop.is_set():
            op, think = self.next_op()
            perform(op, self.gateways, self.retry)
            self.history.write(op.record())
            self.stop.wait(think)


def warm_up(gateways, history, timeout_s=120):
    """One payment through each gateway until it answers 201: the stack is serving. Recorded as operations."""
    for n, (name, port) in enumerate(sorted(gateways.items())):
        deadline = time.time() + timeout_s
        while True:
            op = Op(f"warmup-{n}-{int(time.time() * 1000)}", -1, CALLERS[0], str(uuid.uuid4()), "lock", 1,
                    phase="warmup")
            op.attempts.append(attempt(name, port, ROUTES["lock"], op.headers(True), op.body))
            op.result = result_of(op.attempts[-1])
            history.write(op.record())
            if op.result == "ok":
                break
            if time.time() > deadline:
                raise RuntimeError(f"gateway {name} did not execute a payment within {timeout_s} s: {op.attempts[-1]}")
            time.sleep(0.5)


def final_pass(records, gateways, history, seed, workers=6):
    """Sends every operation's request once more through each gateway, without knobs, once the faults are
    healed and every hold has ended: each must replay its answer (or say the outcome is unknown), never
    execute a second time, and both gateways must say the same. Connection errors and 503 are retried a few
    times (a gateway may still be reconnecting)."""
    todo = [r for r in records if r["phase"] in ("run", "warmup")]
    rng = random.Random(f"{seed}/final")
    plans = [(r, rng.random()) for r in todo]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not plans:
                    return
                r, roll = plans.pop()
            op = Op(r["op"], r["client"], r["caller"], r["key"], r["route"], r["amount"], phase="final")
            names = sorted(gateways)
            if roll < 0.5:
                names.reverse()
            for name in names:
                for _ in range(5):
                    a = attempt(name, gateways[name], ROUTES[op.route], op.headers(False), op.body)
                    op.attempts.append(a)
                    if a.get("status") not in (None, 503):
                        break
                    time.sleep(0.5)
            op.result = result_of(op.attempts[-1])
            history.write(op.record())

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(todo)
