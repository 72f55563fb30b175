#!/usr/bin/env python3
"""The chaos run (`make chaos`, and a short one in `make test`): tests/chaos/docker-compose.yaml, already up
(scripts/compose-test.sh --chaos starts it), under the clients of workload.py while nemesis.py injects
faults; then every fault is healed, every hold is let end, every operation is sent once more (the final
pass), and checker.py reads the whole history. Standard library only; every request goes to 127.0.0.1.

Steps: the checker's self-test (test_checker.py); the gateway's lease checked against the nemesis's longest
pause and cut (the envelope); the stack healthy and one payment through each gateway; CHAOS_SECONDS of
clients and faults; the heal, a quiet wait (lease + hold), the final pass; the upstream's list of payments,
the containers' states and logs; the checker's tables and its violations.

Environment:
  CHAOS_COMPOSE   the docker-compose command line of the chaos stack (with -p and -f)
  CHAOS_SECONDS   how long clients and faults run (default 300)
  CHAOS_SEED      the seed (default: a new one, printed); the same seed replays the same operations and faults
  CHAOS_CLIENTS   client threads (default 6)
  CHAOS_DIR       where runs are written (default .tmp/chaos in the repository): the run goes to last/
                  (the seed, the history, the nemesis log, the executions, the containers' logs, the
                  report and violations.json); a failing run is also kept as
                  failed-seed<SEED>-<UTC time>/
Exit status 1 when the checker finds a violation (or the run itself fails).
"""

import http.client
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import checker  # noqa: E402
import nemesis  # noqa: E402
import workload  # noqa: E402

ROOT = HERE.parents[1]
GATEWAYS = {"envoy-a": 20000, "envoy-b": 20001}
PAYMENTS = 28080
SERVICES = ("envoy-a", "envoy-b", "keystore-1", "keystore-2", "redis", "payments")
GATEWAY_CONFIG = HERE / "gateway.yaml"
DNS_REFRESH_S = 1.0  # gateway.yaml: the keystore cluster's dns_refresh_rate
TICK_S = 0.1  # the filter's root context ticks every 100 ms


def gateway_timings(text):
    """(lock_lease_ms, unknown_hold_ms) of the chaos gateway's filter config, in seconds."""
    found = {}
    for name in ("lock_lease_ms", "unknown_hold_ms"):
        m = re.findall(rf'"{name}":\s*(\d+)', text)
        if len(m) != 1:
            raise RuntimeError(f"{GATEWAY_CONFIG}: expected one {name}, found {len(m)}")
        found[name] = int(m[0]) / 1000
    return found["lock_lease_ms"], found["unknown_hold_ms"]


def envelope(lease_s):
    """Why no pause or cut of the nemesis can end a claim's lease (nemesis.py), or a RuntimeError."""
    period = lease_s / 3
    longest = max(nemesis.PAUSE_S[1], nemesis.CUT_S[1])
    frozen = period + longest + TICK_S
    work = workload.SLOW_MS[1] / 1000
    unreachable = work + longest + DNS_REFRESH_S
    if frozen >= lease_s or unreachable >= lease_s:
        raise RuntimeError(
            f"lock_lease_ms {lease_s * 1000:.0f} is within the nemesis's faults: a frozen holder renews up to "
            f"{frozen:.1f} s after its last renewal, a record waits for the key store up to {unreachable:.1f} s; "
            f"raise it in {GATEWAY_CONFIG.name} or shorten nemesis.PAUSE_S and CUT_S")
    return (f"lease {lease_s:.0f} s: a gateway frozen {longest:.0f} s renews at most {frozen:.1f} s after its last "
            f"renewal, a record waits for an unreachable key store {unreachable:.1f} s at most; only a killed gateway "
            "loses its leases")


def say(text):
    print(f"chaos: {text}", flush=True)


def compose_cmd():
    return shlex.split(os.environ.get("CHAOS_COMPOSE", "docker-compose -p idempotency-chaos -f "
                                      f"{HERE / 'docker-compose.yaml'}"))


def compose(*args):
    return subprocess.run(compose_cmd() + list(args), check=True, text=True, capture_output=True).stdout


def self_test():
    suite = unittest.defaultTestLoader.discover(str(HERE), pattern="test_*.py")
    result = unittest.TextTestRunner(stream=open(os.devnull, "w"), verbosity=0).run(suite)
    if not result.wasSuccessful():
        for _, trace in result.failures + result.errors:
            print(trace, file=sys.stderr)
        raise SystemExit("chaos: the checker's self-test failed")
    say(f"the checker's self-test: {result.testsRun} passed")


def until(what, probe, timeout=180, interval=0.5):
    deadline = time.time() + timeout
    while True:
        try:
            if probe():
                return
        except (OSError, RuntimeError, subprocess.SubprocessError, http.client.HTTPException):
            pass
        if time.time() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def get_json(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status}")
        return json.loads(body)
    finally:
        conn.close()


def containers_at_end(docker, containers, logs_dir):
    """Each service's state, its whole log (written to logs/), and the lines that tell of a crash."""
    out = {}
    logs_dir.mkdir(exist_ok=True)
    for service, cid in sorted(containers.items()):
        status, code, started = docker.state(cid)
        proc = docker.run("logs", cid, check=False)
        text = proc.stdout + proc.stderr
        (logs_dir / f"{service}.log").write_text(text)
        out[service] = {"status": status, "exit_code": code, "started": started,
                        "crash_lines": checker.crash_lines(text)}
    return out


def write_summary(run_dir, lines):
    """summary.txt: why the run failed, in a few lines; scripts/compose-test.sh prints it last, so the tail of a
    CI log says it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.txt").write_text("\n".join(lines) + "\n")
    except OSError:
        pass


def main():
    seconds = float(os.environ.get("CHAOS_SECONDS", "300"))
    seed = os.environ.get("CHAOS_SEED") or str(random.SystemRandom().randrange(1, 10 ** 9))
    clients = int(os.environ.get("CHAOS_CLIENTS", "6"))
    base = Path(os.environ.get("CHAOS_DIR", ROOT / ".tmp" / "chaos"))
    run_dir = base / "last"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    (run_dir / "seed").write_text(seed + "\n")
    say(f"seed {seed} (replay: CHAOS_SEED={seed} make chaos), {seconds:.0f} s, {clients} clients, run in {run_dir}")

    self_test()
    lease_s, hold_s = gateway_timings(GATEWAY_CONFIG.read_text())
    say(f"envelope: {envelope(lease_s)}")

    docker = nemesis.Docker()
    containers = {}
    for service in SERVICES:
        cid = compose("ps", "-q", service).strip()
        if not cid:
            raise RuntimeError(f"service {service} has no container: is the chaos stack up?")
        containers[service] = cid
    nets = json.loads(docker.run("inspect", "-f", "{{json .NetworkSettings.Networks}}", containers["envoy-a"]).stdout)
    networks = {"keys": next(n for n in nets if n.endswith("_keys"))}
    nets = json.loads(docker.run("inspect", "-f", "{{json .NetworkSettings.Networks}}",
                                 containers["keystore-1"]).stdout)
    networks["data"] = next(n for n in nets if n.endswith("_data"))

    started = time.time()
    until("both gateways and Redis healthy",
          lambda: all(docker.health(containers[s]) == "healthy" for s in ("envoy-a", "envoy-b", "redis")))
    skipped = {}
    why = nemesis.netem_probe(docker, containers["payments"])
    if why:
        skipped["latency"] = why
    skipped["redis-failover"] = ("not in this topology: one Redis, no replica (a Redis Cluster with replicas "
                                 "is six more processes on a 2-core machine)")
    for kind, reason in skipped.items():
        say(f"fault kind {kind} not injected: {reason}")

    history = workload.History(run_dir / "history.jsonl")
    workload.warm_up(GATEWAYS, history)
    say(f"stack serving after {time.time() - started:.1f} s")

    config = {"seed": seed, "seconds": seconds, "clients": clients, "lease_s": lease_s, "hold_s": hold_s,
              "start": time.time(), "skipped": skipped}
    (run_dir / "config.json").write_text(json.dumps(config, indent=1))

    stop = threading.Event()
    keys = workload.Keys()
    threads = [workload.Client(i, seed, GATEWAYS, history, stop, keys) for i in range(clients)]
    nem = nemesis.Nemesis(seed, docker, containers, networks, run_dir / "nemesis.jsonl", stop, skipped=skipped)
    for t in threads:
        t.start()
    nem.start()
    next_note = time.time() + 30
    while time.time() < config["start"] + seconds:
        time.sleep(1)
        if time.time() >= next_note:
            say(f"{time.time() - config['start']:.0f} s: {history.count} operations written")
            next_note += 30
    stop.set()
    nem.join(120)
    for t in threads:
        t.join(workload.OP_BUDGET_S + 10)
    if nem.failure:
        raise RuntimeError(f"the nemesis failed: {nem.failure}")
    say(f"faults healed, clients done: {history.count} operations; waiting {lease_s + hold_s + 1:.0f} s for "
        "every lease and hold to end")
    until("both gateways healthy", lambda: all(docker.health(containers[s]) == "healthy" for s in GATEWAYS),
          timeout=60)
    time.sleep(lease_s + hold_s + 1)

    records = [json.loads(l) for l in (run_dir / "history.jsonl").read_text().splitlines() if l.strip()]
    t = time.time()
    n = workload.final_pass(records, GATEWAYS, history, seed)
    history.close()
    say(f"final pass: {n} operations sent again in {time.time() - t:.1f} s")

    executions = get_json(PAYMENTS, "/payments")
    (run_dir / "executions.json").write_text(json.dumps(executions))
    state = containers_at_end(docker, containers, run_dir / "logs")
    (run_dir / "containers.json").write_text(json.dumps(state, indent=1))

    text, violations = checker.report(*checker.load(run_dir))
    (run_dir / "report.txt").write_text(text + "\n")
    (run_dir / "violations.json").write_text(json.dumps([v.as_dict() for v in violations], indent=1))
    print(text, flush=True)
    if violations:
        kept = base / f"failed-seed{seed}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        shutil.copytree(run_dir, kept)
        lines = [f"chaos: FAILED: {len(violations)} violation(s); seed {seed}; run kept in {kept}"]
        lines += [f"  {v.invariant} op {v.op}: {v.message}" for v in violations[:10]]
        write_summary(run_dir, lines)
        say(f"FAILED: {len(violations)} violation(s); seed {seed}; run kept in {kept}")
        say(f"replay: CHAOS_SEED={seed} CHAOS_SECONDS={seconds:.0f} make chaos; "
            f"check again: python3 tests/chaos/checker.py {kept}")
        print(f"chaos: 0 passed, {len(violations)} failed", flush=True)
        return 1
    print("chaos: 1 passed, 0 failed", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or ""
        print(f"chaos: FAILED: {e} {detail}".rstrip(), file=sys.stderr, flush=True)
        last = Path(os.environ.get("CHAOS_DIR", ROOT / ".tmp" / "chaos")) / "last"
        write_summary(last, [f"chaos: FAILED: {e} {detail}".rstrip()])
        if last.exists():
            print(f"chaos: what the run wrote is in {last}", file=sys.stderr, flush=True)
        sys.exit(1)
