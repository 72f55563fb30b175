#!/usr/bin/env python3
"""The chaos run's checker (standard library only): reads a whole run afterwards and names every violation.

Input, a run folder (tests/chaos/run.py writes it; `python3 tests/chaos/checker.py FOLDER` checks it again):
  config.json      the seed and the run's settings
  history.jsonl    one line per operation and phase (warmup, run, final): see workload.py
  nemesis.jsonl    one line per fault: see nemesis.py
  executions.json  the upstream's list of payments (GET /payments): every execution with the request JSON
  containers.json  each container at the end: its state
  logs/            each container's log (read for the lines that tell of a crash)

A key is a (caller, key) pair: records are scoped by caller, so two callers that share a key string have
two keys. Every operation has a key of its own, so executions and answers are told apart by the operation
id the request body carries. The invariants:

  single-execution   (lock and detached routes) the upstream executed each key at most once, whatever the
                     nemesis did: a gateway killed (SIGKILL) while its request is at the upstream leaves its
                     claim to run out, and the key store then reports the claim abandoned (the key answers
                     409, then 410 outcome unknown) instead of letting another gateway run it again. A second
                     execution is a violation; when the history shows it followed a lease that ended (the
                     holder killed, frozen or cut off for a lease), the violation says so. On the release
                     route a key may execute once more after each attempt that may have executed without a
                     kept answer (a timeout, a lost connection, a cut answer, a 5xx, or a fault during it):
                     executions within that are counted apart as allowed re-executions, and only more is a
                     violation.
  answer-is-execution every successful answer is, byte for byte as JSON, the payment of one execution of its
                     key (under lock: its single execution).
  own-answer         every successful answer carries the request of its own operation and caller: no client
                     got another caller's or another operation's answer.
  answer-kept        once a client got a successful answer, every later answer to that key is the same
                     payment (a replay): never 409, 410, 422, nor another payment.
  real-unknown       a 409 or a 410 (outcome unknown) comes only after a real unknown: an earlier attempt of
                     the same key that timed out, lost its connection, got a cut answer or a 5xx, carried a
                     fault knob, or overlapped a fault.
  no-false-mismatch  no 422: each (caller, key) belongs to one operation, whose request never changes.
  no-crash           every gateway and key store is running at the end; none exited unless the nemesis
                     killed it; no `[critical]` or panic line in their logs.

A lease that ended (holder gone, or frozen or cut off from the key store for a whole lease) used to let
another gateway take the key over; the key store now keeps such a claim, abandoned, for the route's
retention and reports it, so under lock and detached execution there is no exempt class any more. The
checker still looks for the evidence (lease_case: an attempt that may have made the first execution, a
fault that kept its gateway's claim from being renewed for a lease, every taker after the lease could
end) and names it in the violation, as the likeliest cause.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

NEMESIS_KINDS = ("pause", "kill", "cut-gateway-store", "cut-store-redis", "latency")
KNOB_KINDS = ("slow", "reset", "cut", "5xx")
# A renewal goes out on the first 100 ms tick after a third of the lease: the last one before a fault is at
# most that period (and this slack) before it.
RENEWAL_SLACK_S = 0.2
# After the upstream's work, the record is on its way to the key store.
RECORD_SLACK_S = 0.5
# Faults logged without the time their command was done took effect within this.
ONSET_S = 0.5
# tests/chaos/gateway.yaml: the route timeout, the longest a gateway waits on the upstream.
ROUTE_TIMEOUT_S = 10.0
INF = float("inf")
# The routes whose keys execute at most once (unknown_outcome "lock": inline, and detached execution).
EXACTLY_ONCE = ("lock", "detached")
ROUTE_TITLES = {"lock": 'unknown_outcome: "lock"', "detached": 'execution: "detached", unknown_outcome: "lock"',
                "release": 'unknown_outcome: "release"'}
# Envoy logs a crash (signal, assertion, the filter's panic hook) at critical level; Rust panics say "panicked at".
CRASH_MARKS = ("[critical]", "panicked at", "Caught Segmentation", "Caught Aborted")


def crash_lines(log):
    return [line for line in log.splitlines() if any(mark in line for mark in CRASH_MARKS)][:20]


class Violation:
    def __init__(self, invariant, op, message, evidence=None):
        self.invariant, self.op, self.message, self.evidence = invariant, op, message, evidence or {}

    def as_dict(self):
        return {"invariant": self.invariant, "op": self.op, "message": self.message, "evidence": self.evidence}

    def __repr__(self):
        return f"Violation({self.invariant}, {self.op}, {self.message})"


class Key:
    """Every attempt of one operation (all its phases), in time order, and its executions."""

    def __init__(self, record):
        self.op = record["op"]
        self.caller, self.key, self.route = record["caller"], record["key"], record["route"]
        self.knob = record.get("knob")
        self.phases = []
        self.attempts = []  # (phase, attempt)
        self.results = {}
        self.executions = []

    def add(self, record):
        self.phases.append(record["phase"])
        self.results[record["phase"]] = record.get("result")
        if record.get("knob"):
            self.knob = record["knob"]
        for n, a in enumerate(record.get("attempts", [])):
            a = dict(a)
            a["knobbed"] = bool(record.get("knob")) and n == 0
            self.attempts.append((record["phase"], a))
        self.attempts.sort(key=lambda pa: pa[1]["start"])

    def span(self):
        """From the first to the last attempt the client made while faults ran (the final pass left out)."""
        during = [a for p, a in self.attempts if p != "final"]
        if not during:
            return None
        return min(a["start"] for a in during), max(a["end"] for a in during)


def uncertain(attempt):
    """The attempt may have executed without its answer reaching the client."""
    if "error" in attempt:
        return attempt["error"] != "refused"
    return attempt.get("status", 0) >= 500 or attempt.get("knobbed", False)


def overlaps(attempt, faults):
    return any(f["start"] <= attempt["end"] and attempt["start"] <= f["end"] for f in faults)


def payment_of(attempt):
    try:
        value = json.loads(attempt["body"])
    except (KeyError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def may_execute(attempt):
    """The attempt may have reached the upstream and made a payment: not when the gateway answered it
    itself (409, 410, another 4xx, a replay, the filter's 503 when the key store is out of reach)."""
    if "error" in attempt:
        return attempt["error"] != "refused"
    status = attempt.get("status", 0)
    if 200 <= status < 300:
        return not attempt.get("replayed")
    return status >= 500 and attempt.get("problem") != "store-unavailable"


def fresh_payment_id(attempt):
    """The id of the payment a fresh (not replayed) 2xx carries: the upstream made it during the attempt."""
    if 200 <= attempt.get("status", 0) < 300 and not attempt.get("replayed"):
        return (payment_of(attempt) or {}).get("id")
    return None


def execution_times(keys, executions):
    """{payment id: (earliest, latest)}: when the upstream made each payment. A payment is made after its
    key's first attempt started and, when a fresh 2xx carried it, during that attempt; every answer that
    carried it ended after it. The upstream numbers payments in the order it makes them, so each payment's
    bounds also bound the payments before and after it."""
    own = {}
    for k in keys.values():
        if not k.attempts:
            continue
        ids = {p.get("id") for p in k.executions}
        for pid in ids:
            own[pid] = [k.attempts[0][1]["start"], INF]
        for _, a in k.attempts:
            if not 200 <= a.get("status", 0) < 300:
                continue
            pid = (payment_of(a) or {}).get("id")
            if pid in ids:
                own[pid][1] = min(own[pid][1], a["end"])
                if not a.get("replayed"):
                    own[pid][0] = max(own[pid][0], a["start"])
    ids = [p.get("id") for p in sorted(executions, key=lambda p: p.get("sequence", 0))]
    lo, hi, running = {}, {}, -INF
    for pid in ids:
        running = max(running, own.get(pid, (-INF, INF))[0])
        lo[pid] = running
    running = INF
    for pid in reversed(ids):
        running = min(running, own.get(pid, (-INF, INF))[1])
        hi[pid] = running
    return {pid: (lo[pid], hi[pid]) for pid in ids}


def fault_onset(fault):
    """The time by which the fault was in effect (its command done), None if it never was."""
    if "applied" in fault:
        return fault["applied"]
    return None if fault.get("error") else fault["start"] + ONSET_S


def fault_seconds(fault):
    return fault.get("seconds", fault.get("end", fault["start"]) - fault["start"])


def ends_leases(fault, gateway, lease_s):
    """The fault kept `gateway`'s claims from being renewed, or its records from being stored, for a lease."""
    kind, target = fault["kind"], fault["target"]
    if target == gateway:
        return kind == "kill" or (kind in ("pause", "cut-gateway-store") and fault_seconds(fault) >= lease_s)
    if target == "redis" or target.startswith("keystore"):
        return kind in ("pause", "kill", "cut-store-redis") and fault_seconds(fault) >= lease_s
    return False


def lease_case(k, before, extra, times, faults, lease_s):
    """The evidence that `extra`, an execution of k after the execution `before`, is a takeover once the
    lease of the claim that made `before` could have ended (see the module's docstring); None if not shown."""
    fresh = {}
    for _, a in k.attempts:
        pid = fresh_payment_id(a)
        if pid is not None:
            fresh.setdefault(pid, a)

    def makers(payment):
        if payment.get("id") in fresh:
            return [fresh[payment["id"]]]
        latest = times.get(payment.get("id"), (-INF, INF))[1]
        return [a for _, a in k.attempts if may_execute(a) and a["start"] <= latest
                and not any(a is b for b in fresh.values())]

    period = lease_s / 3
    latest_before = times.get(before.get("id"), (-INF, INF))[1]
    for a in makers(before):
        # The claim is held until the upstream's work is over and the record is on its way.
        held = max(a["end"], latest_before if latest_before < INF else a["end"] + ROUTE_TIMEOUT_S) + RECORD_SLACK_S
        for f in faults:
            onset = fault_onset(f)
            if onset is None or not (a["start"] <= onset and f["start"] <= held):
                continue
            if not ends_leases(f, a["gateway"], lease_s):
                continue
            lease_end = max(a["start"], f["start"] - period - RENEWAL_SLACK_S) + lease_s
            later = [b for b in makers(extra) if b is not a]
            if later and min(b["start"] for b in later) >= lease_end:
                return {"holder": a, "fault": f, "lease_end": lease_end, "takers": later,
                        "before": before, "before_times": times.get(before.get("id")), "extra": extra}
    return None


def brief(attempt, t0):
    """An attempt in one line, with times relative to the run's start."""
    what = attempt.get("status", attempt.get("error"))
    extra = []
    if attempt.get("replayed"):
        extra.append("replayed")
    if attempt.get("problem"):
        extra.append(attempt["problem"])
    if attempt.get("knobbed"):
        extra.append("knob")
    pay = payment_of(attempt) if 200 <= attempt.get("status", 0) < 300 else None
    if pay:
        extra.append(f"id {pay.get('id')}")
    return (f"{attempt['gateway']} {attempt['start'] - t0:8.3f}..{attempt['end'] - t0:8.3f} s {what}"
            + (f" ({', '.join(extra)})" if extra else ""))


def check(history, executions, faults, containers, config):
    """(violations, keys, stats): `history` is the list of history records, `executions` the upstream's list
    of payments, `faults` the nemesis log, `containers` the end state per service."""
    violations = []
    keys = {}
    for record in history:
        k = keys.setdefault(record["op"], Key(record))
        k.add(record)
    faults_done = [f for f in faults if f["kind"] in NEMESIS_KINDS and "end" in f]
    t0 = config.get("start", min((a["start"] for k in keys.values() for _, a in k.attempts), default=0))

    for payment in executions:
        req = payment.get("request") or {}
        k = keys.get(req.get("op")) if isinstance(req, dict) else None
        if k is None or req.get("caller") != k.caller or req.get("key") != k.key:
            violations.append(Violation("single-execution", req.get("op") if isinstance(req, dict) else None,
                                        "an execution that no operation of the history asked for",
                                        {"payment": payment}))
            continue
        k.executions.append(payment)

    owners = defaultdict(set)
    for k in keys.values():
        owners[(k.caller, k.key)].add(k.op)
    stats = {"allowed_reexecutions": 0}
    lease_s = config.get("lease_s")
    times = execution_times(keys, executions)
    for k in keys.values():
        evidence = lambda: {  # noqa: E731 - built only for a violation
            "caller": k.caller, "key": k.key, "route": k.route, "knob": k.knob,
            "attempts": [f"{p:6} {brief(a, t0)}" for p, a in k.attempts],
            "executions": k.executions,
        }
        unsure = [a for _, a in k.attempts if uncertain(a) or overlaps(a, faults_done)]
        n_exec = len(k.executions)
        if k.route in EXACTLY_ONCE and n_exec > 1:
            ordered = sorted(k.executions, key=lambda p: p.get("sequence", 0))
            cases = [lease_case(k, b, e, times, faults_done, lease_s) if lease_s else None
                     for b, e in zip(ordered, ordered[1:])]
            shown = [c for c in cases if c]
            why = ""
            if shown:
                f = shown[0]["fault"]
                why = (f" ({len(shown)} of the {n_exec - 1} extra after a lease that ended, first after "
                       f"{f['kind']} {f['target']}: the key store must report an abandoned claim, never let "
                       "it run again)")
            violations.append(Violation(
                "single-execution", k.op, f"executed {n_exec} times under {k.route}{why}", evidence()))
        if k.route == "release" and n_exec > 1:
            allowed = 1 + len(unsure)
            if n_exec > allowed:
                violations.append(Violation(
                    "single-execution", k.op,
                    f"executed {n_exec} times under release; {len(unsure)} uncertain attempt(s) allow {allowed}",
                    evidence()))
            else:
                stats["allowed_reexecutions"] += n_exec - 1

        first_ok = None
        for phase, a in k.attempts:
            status = a.get("status")
            if status is not None and 200 <= status < 300:
                pay = payment_of(a)
                req = (pay or {}).get("request") if isinstance((pay or {}).get("request"), dict) else {}
                if pay is None:
                    violations.append(Violation("answer-is-execution", k.op,
                                                f"a {status} whose body is not a payment", evidence()))
                    continue
                if req.get("caller") != k.caller:
                    violations.append(Violation(
                        "own-answer", k.op,
                        f"{k.caller} got the answer of caller {req.get('caller')} (operation {req.get('op')})",
                        evidence()))
                elif req.get("op") != k.op or req.get("key") != k.key:
                    violations.append(Violation("own-answer", k.op,
                                                f"got the answer of operation {req.get('op')}", evidence()))
                if pay not in k.executions:
                    violations.append(Violation(
                        "answer-is-execution", k.op,
                        f"answer {pay.get('id')} is not " + ("its execution" if n_exec == 1 else
                                                             f"one of its {n_exec} executions"),
                        evidence()))
                if first_ok is None:
                    first_ok = pay
                elif pay.get("id") != first_ok.get("id"):
                    message = f"answered {first_ok.get('id')}, later {pay.get('id')} ({phase})"
                    violations.append(Violation("answer-kept", k.op, message, evidence()))
                continue
            if status in (409, 410, 422) and first_ok is not None:
                problem = f" {a['problem']}" if a.get("problem") else ""
                message = f"answered {first_ok.get('id')}, later {status}{problem} ({phase})"
                violations.append(Violation("answer-kept", k.op, message, evidence()))
                continue
            if status == 422 and owners[(k.caller, k.key)] == {k.op}:
                violations.append(Violation("no-false-mismatch", k.op,
                                            f"422 for a key only this operation used ({phase})", evidence()))
                continue
            if status == 409 or status == 410:
                before = [b for _, b in k.attempts if b["start"] < a["start"] and b is not a]
                if not any(uncertain(b) or overlaps(b, faults_done) for b in before):
                    violations.append(Violation(
                        "real-unknown", k.op,
                        f"{status} {a.get('problem', '')} with no earlier uncertain attempt ({phase})".rstrip(),
                        evidence()))

    for service, c in sorted(containers.items()):
        if not (service.startswith("envoy") or service.startswith("keystore")):
            continue
        if c.get("status") != "running":
            violations.append(Violation("no-crash", None, f"{service} is {c.get('status')} at the end",
                                        {"container": c}))
        for line in c.get("crash_lines", []):
            violations.append(Violation("no-crash", None, f"{service} logged: {line[:300]}", {"container": service}))
    for f in faults:
        if f["kind"] == "unexpected-exit":
            violations.append(Violation("no-crash", None, f"{f['target']} exited on its own: {f.get('detail')}",
                                        {"fault": f}))
    return dedupe(violations), keys, stats


def dedupe(violations):
    """One violation per invariant and operation: the first, with how many more attempts showed it."""
    first, more = {}, defaultdict(int)
    out = []
    for v in violations:
        if v.op is None:
            out.append(v)
            continue
        key = (v.invariant, v.op)
        if key in first:
            more[key] += 1
            continue
        first[key] = v
        out.append(v)
    for key, n in more.items():
        first[key].message += f" (and {n} more answer(s) like it)"
    return out


def table(keys, faults, violations, route):
    """Rows: each fault kind (nemesis faults, then the workload's knobs), operations with no fault, all."""
    faults_done = [f for f in faults if f["kind"] in NEMESIS_KINDS and "end" in f]
    by_op = defaultdict(set)
    for v in violations:
        if v.op is not None:
            by_op[v.op].add(v.invariant)
    run_keys = [k for k in keys.values() if k.route == route and ("run" in k.phases or "warmup" in k.phases)]
    rows = []

    def row(name, n_faults, ks):
        ks = list(ks)
        rows.append((name, n_faults, len(ks), sum(len(k.executions) for k in ks),
                     sum(max(0, len(k.executions) - 1) for k in ks),
                     sum(1 for k in ks if k.results.get("run") == "ok"),
                     sum(1 for k in ks if k.results.get("run") == "unknown"),
                     sum(1 for k in ks if k.results.get("run") == "gave-up"),
                     sum(len(by_op[k.op]) for k in ks)))

    touched = defaultdict(list)
    for k in run_keys:
        span = k.span()
        kinds = set()
        if span:
            for f in faults_done:
                if f["start"] <= span[1] and span[0] <= f["end"]:
                    kinds.add(f["kind"])
        if k.knob:
            kinds.add(f"knob {k.knob}")
        for kind in kinds:
            touched[kind].append(k)
        if not kinds:
            touched["none"].append(k)
    for kind in NEMESIS_KINDS:
        row(kind, sum(1 for f in faults_done if f["kind"] == kind and not f.get("error")), touched[kind])
    for kind in KNOB_KINDS:
        ks = touched[f"knob {kind}"]
        row(f"knob {kind}", len(ks), ks)
    row("none", 0, touched["none"])
    row("all", len(faults_done), run_keys)
    return rows


def render(rows, title):
    head = ("fault kind", "faults", "ops", "executions", "re-exec", "ok", "unknown", "gave up", "violations")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = [title, "  " + "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    for r in rows:
        lines.append("  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                      for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def load(folder):
    folder = Path(folder)

    def lines(name):
        p = folder / name
        return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []

    config = json.loads((folder / "config.json").read_text())
    executions = json.loads((folder / "executions.json").read_text())
    containers = json.loads((folder / "containers.json").read_text()) if (folder / "containers.json").exists() else {}
    for service, c in containers.items():
        log = folder / "logs" / f"{service}.log"
        if log.exists():
            c["crash_lines"] = crash_lines(log.read_text())
    return lines("history.jsonl"), executions, lines("nemesis.jsonl"), containers, config


def fault_text(f, t0):
    return (f"{f['kind']} {f['target']} {f['start'] - t0:.3f}..{f.get('end', f['start']) - t0:.3f} s"
            + (f" ({f['detail']})" if f.get("detail") else ""))


def report(history, executions, faults, containers, config, max_shown=20):
    """(text, violations): the tables and every violation, as printed at the end of a run."""
    violations, keys, stats = check(history, executions, faults, containers, config)
    out = [f"chaos: seed {config.get('seed')}, {config.get('seconds')} s, "
           f"{sum(1 for k in keys.values() if 'run' in k.phases)} operations, {len(executions)} executions, "
           f"{sum(1 for f in faults if f['kind'] in NEMESIS_KINDS)} faults"]
    for kind, why in sorted(config.get("skipped", {}).items()):
        out.append(f"chaos: fault kind {kind} not injected: {why}")
    for route, title in ROUTE_TITLES.items():
        out.append(render(table(keys, faults, violations, route), f"route {route} ({title}):"))
    out.append(f"release route: {stats['allowed_reexecutions']} re-execution(s) allowed by the policy "
               "(an uncertain attempt before each)")
    t0 = config.get("start", 0)
    faults_by_time = sorted((f for f in faults if "start" in f), key=lambda f: f["start"])
    for n, v in enumerate(violations):
        if n == max_shown:
            out.append(f"... {len(violations) - max_shown} more violations in violations.json")
            break
        out.append(f"VIOLATION {v.invariant}: op {v.op}: {v.message}")
        ev = v.evidence
        if "attempts" in ev:
            out.append(f"  caller {ev['caller']} key {ev['key']} route {ev['route']} knob {ev['knob']}")
            for line in ev["attempts"]:
                out.append(f"    {line}")
            for p in ev["executions"]:
                out.append(f"    executed: {p.get('id')} sequence {p.get('sequence')}")
            span = keys[v.op].span() if v.op in keys else None
            if span:
                for f in faults_by_time:
                    if f["start"] <= span[1] + 1 and span[0] - 10 <= f.get("end", f["start"]):
                        out.append(f"    fault: {f['kind']} {f['target']} {f['start'] - t0:8.3f}.."
                                   f"{f.get('end', f['start']) - t0:8.3f} s {f.get('detail', '')}")
    out.append(f"chaos: {len(violations)} violation(s)")
    return "\n".join(out), violations


def main(argv):
    if len(argv) != 2:
        print("usage: checker.py RUN_FOLDER", file=sys.stderr)
        return 2
    text, violations = report(*load(argv[1]))
    print(text)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
