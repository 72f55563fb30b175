#!/usr/bin/env python3
"""The docker-compose story of docs/deploy.md, run against the stack that scripts/compose-test.sh started with
docker-compose.yaml (standard library only; every request goes to 127.0.0.1):

  1. waits until the stack is healthy: the compose health checks (redis, both gateways, prometheus) and,
     from the host, the key store's /readyz and the payments API;
  2. a payment through gateway A executes (201); the same key and body through gateway B is replayed
     (`idempotent-replayed: true`, same body, the upstream not called again); another body gets 422;
  3. a retry while the first request is still at the upstream gets 409 with Retry-After;
  4. Redis is stopped: a new key gets 503 (fail closed) and the key store is not ready; Redis is started
     again: it holds the same keys, and gateway B, restarted with an empty cache, replays the first key from
     the key store; the key refused during the outage executes now;
  5. Prometheus has scraped it all: every query of deploy/observability/grafana-dashboard.json returns
     data, the counters of the story are there, every alert rule is loaded and healthy, and the
     key-store error alerts are active after the outage;
  6. gateway A is killed: gateway B still replays and executes.

Environment: COMPOSE (the docker-compose command line, with -p and -f), STORY_TIMEOUT (seconds to wait for
health, default 180). Prints each step, then `compose: N passed, 0 failed`.
"""

import http.client
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
import observability  # noqa: E402

HOST = "127.0.0.1"
GATEWAY_A, GATEWAY_B = 10000, 10001
PAYMENTS, KEYSTORE, PROMETHEUS = 8080, 8081, 9090
COMPOSE = shlex.split(os.environ.get("COMPOSE", "docker-compose"))
TIMEOUT = float(os.environ.get("STORY_TIMEOUT", "180"))
CALLER = "Bearer alice"

passed = 0


def step(text):
    print(f"compose: {text}", flush=True)


def check(cond, what):
    global passed
    if not cond:
        raise AssertionError(what)
    passed += 1
    print(f"  ok  {what}", flush=True)


def request(port, method, path, body=None, headers=None, timeout=10):
    """(status, lower-cased headers, body bytes); raises OSError when nothing answers."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def pay(port, key, amount, extra=None):
    headers = {"authorization": CALLER, "idempotency-key": f'"{key}"', "content-type": "application/json"}
    headers.update(extra or {})
    return request(port, "POST", "/payments", json.dumps({"amount": amount}).encode(), headers)


def upstream_posts():
    status, _, body = request(PAYMENTS, "GET", "/_demo/stats")
    assert status == 200, status
    return json.loads(body)["post_requests"]


def compose(*args, capture=False):
    proc = subprocess.run(COMPOSE + list(args), check=True, text=True,
                          stdout=subprocess.PIPE if capture else None)
    return proc.stdout if capture else None


def until(what, probe, timeout=TIMEOUT, interval=0.25):
    """Polls probe() until it returns a true value (returned), or fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except (OSError, http.client.HTTPException, AssertionError, subprocess.CalledProcessError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def health(service):
    cid = compose("ps", "-q", service, capture=True).strip()
    if not cid:
        return "absent"
    out = subprocess.run(["docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{else}}"
                          "{{.State.Status}}{{end}}", cid], check=True, text=True, stdout=subprocess.PIPE)
    return out.stdout.strip()


def healthy(*services):
    states = {s: health(s) for s in services}
    if any(state != "healthy" for state in states.values()):
        raise AssertionError(f"health: {states}")
    return True


def answers(port, path, want=200):
    return request(port, "GET", path, timeout=2)[0] == want


def refused(port):
    try:
        request(port, "GET", "/", timeout=2)
    except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
        return True
    return False


def prom(path, **params):
    status, _, body = request(PROMETHEUS, "GET", f"{path}?{urllib.parse.urlencode(params)}")
    doc = json.loads(body)
    if status != 200 or doc.get("status") != "success":
        raise AssertionError(f"{path} {params}: {status} {body[:300]!r}")
    return doc["data"]


def query(expr):
    return prom("/api/v1/query", query=expr)["result"]


def scalar(expr):
    result = query(expr)
    return float(result[0]["value"][1]) if result else None


def redis_keys():
    out = compose("exec", "-T", "redis", "redis-cli", "-a", "demo-only-redis-password", "--no-auth-warning", "--scan", capture=True)
    return sorted(line for line in out.splitlines() if line)


def main():
    start = time.monotonic()
    step("waiting for the stack to be healthy")
    until("redis, envoy-a, envoy-b and prometheus healthy",
          lambda: healthy("redis", "envoy-a", "envoy-b", "prometheus"))
    until("the key store ready (/readyz)", lambda: answers(KEYSTORE, "/readyz"))
    until("the payments API", lambda: answers(PAYMENTS, "/_demo/stats"))
    # Prometheus has scraped both gateways and the key store once before any traffic, so the counters of
    # the story start from a sample taken at zero.
    until("Prometheus scraping its three targets", lambda: scalar("count(up == 1)") == 3)
    step(f"healthy after {time.monotonic() - start:.1f} s")

    step("a replay through both gateways")
    k1 = str(uuid.uuid4())
    before = upstream_posts()
    s1, h1, b1 = pay(GATEWAY_A, k1, 100)
    check(s1 == 201, f"gateway A executes the payment: {s1}")
    check("idempotent-replayed" not in h1, "the first answer is not a replay")
    check(upstream_posts() == before + 1, "the upstream saw it once")
    s2, h2, b2 = pay(GATEWAY_B, k1, 100)
    check(s2 == 201 and h2.get("idempotent-replayed") == "true",
          f"gateway B answers the same key with the stored response: {s2}, idempotent-replayed: {h2.get('idempotent-replayed')}")
    check(b2 == b1, "the replayed body is the stored one, byte for byte")
    check(upstream_posts() == before + 1, "the upstream was not called again")
    s3, h3, _ = pay(GATEWAY_B, k1, 999)
    check(s3 == 422 and h3.get("content-type", "").startswith("application/problem+json"),
          f"the same key with another payload gets 422 problem+json: {s3}")

    step("a retry while the first request is at the upstream")
    k2 = str(uuid.uuid4())
    posts = upstream_posts()
    first = {}
    slow = threading.Thread(target=lambda: first.update(r=pay(GATEWAY_A, k2, 42, {"x-demo-delay-ms": "3000"})))
    slow.start()
    until("the slow request at the upstream", lambda: upstream_posts() == posts + 1, timeout=30)
    s4, h4, _ = pay(GATEWAY_B, k2, 42)
    check(s4 == 409 and "retry-after" in h4, f"gateway B answers 409 with Retry-After while it runs: {s4}")
    slow.join(30)
    check(first.get("r", (None,))[0] == 201, "the first request completes with 201")

    # Gateway B restarts below (its counters start again from zero): let Prometheus scrape them first.
    until("Prometheus scraping gateway B's replay, 409 and 422",
          lambda: all((scalar(f'sum({m}{{instance="envoy-b:9902"}})') or 0) >= 1
                      for m in ("idempotency_replayed", "idempotency_conflict", "idempotency_mismatch")),
          timeout=60, interval=1)

    step("Redis stopped and started again")
    keys_before = redis_keys()
    check(len(keys_before) >= 2, f"Redis holds the records ({len(keys_before)} keys)")
    compose("stop", "redis")
    until("the key store not ready without Redis", lambda: answers(KEYSTORE, "/readyz", 503), timeout=30)
    k3 = str(uuid.uuid4())
    s5, h5, _ = pay(GATEWAY_A, k3, 7)
    check(s5 == 503 and h5.get("content-type", "").startswith("application/problem+json"),
          f"while Redis is down a new key gets 503 problem+json (fail closed): {s5}")
    compose("start", "redis")
    until("redis healthy", lambda: healthy("redis"), timeout=60)
    until("the key store ready again", lambda: answers(KEYSTORE, "/readyz"), timeout=60)
    check(redis_keys() == keys_before, "after the restart Redis holds the same keys (append-only file on the volume)")
    compose("restart", "envoy-b")
    until("envoy-b healthy after its restart", lambda: healthy("envoy-b"), timeout=60)
    s6, h6, b6 = pay(GATEWAY_B, k1, 100)
    check(s6 == 201 and h6.get("idempotent-replayed") == "true" and b6 == b1,
          "gateway B, restarted with an empty cache, replays the first key from the key store")
    posts = upstream_posts()
    s7, _, _ = pay(GATEWAY_A, k3, 7)
    check(s7 == 201 and upstream_posts() == posts + 1, f"the key refused during the outage executes now: {s7}")

    step("Prometheus: the dashboard's queries, the story's counters, the alerts")
    queries = observability.dashboard_queries()

    def every_query_has_data():
        empty = [f"{title}/{ref}: {expr}" for title, ref, expr in queries if not query(expr)]
        if empty:
            raise AssertionError(f"no data yet for {empty}")
        return True

    until("data for every dashboard query", every_query_has_data, timeout=90, interval=2)
    check(True, f"all {len(queries)} dashboard queries return data")
    # Gateway A executed three keys. Gateway B's counters started again with its restart, and a reset that
    # happens between two scrapes can hide from Prometheus, so B's counts are checked as "at least one".
    expected = {
        "idempotency_executed": 3, "idempotency_replayed": 1, "idempotency_mismatch": 1,
        "idempotency_conflict": 1, "idempotency_store_error": 1,
    }

    def counters_seen():
        got = {name: scalar(f"sum(increase({name}[1h]))") or 0 for name in expected}
        short = {n: v for n, v in got.items() if v < expected[n] - 0.5}
        if short:
            raise AssertionError(f"counters still low: {short}")
        return True

    until("the story's counters in Prometheus", counters_seen, timeout=60, interval=2)
    check(True, "Prometheus counted the executions, replays, 409, 422 and the store error")
    check((scalar("sum(keystore_backend_errors_total)") or 0) >= 1,
          "the key store's backend errors are scraped (keystore_backend_errors_total)")
    groups = prom("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    check(len(rules) >= 5 and all(r.get("health") == "ok" for r in rules),
          f"Prometheus loaded {len(rules)} alert rules, all evaluated without error")

    def store_alerts_active():
        alerts = {a["labels"]["alertname"] for a in prom("/api/v1/alerts")["alerts"]
                  if a["state"] in ("pending", "firing")}
        if not {"IdempotencyKeyStoreErrors", "IdempotencyKeyStoreBackendErrors"} <= alerts:
            raise AssertionError(f"active alerts: {sorted(alerts)}")
        return True

    until("the key-store alerts after the outage", store_alerts_active, timeout=60, interval=2)
    check(True, "the key-store error alerts are active after the Redis outage")

    step("gateway A killed")
    compose("kill", "envoy-a")
    until("gateway A gone", lambda: refused(GATEWAY_A), timeout=30)
    check(True, "gateway A refuses connections")
    s8, h8, b8 = pay(GATEWAY_B, k1, 100)
    check(s8 == 201 and h8.get("idempotent-replayed") == "true" and b8 == b1, "gateway B still replays")
    s9, h9, _ = pay(GATEWAY_B, str(uuid.uuid4()), 5)
    check(s9 == 201 and "idempotent-replayed" not in h9, f"gateway B still executes new keys: {s9}")

    step(f"story done in {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any failure as the story's failure
        print(f"compose: FAILED: {e}", file=sys.stderr, flush=True)
        print(f"compose: {passed} passed, 1 failed", flush=True)
        sys.exit(1)
    print(f"compose: {passed} passed, 0 failed", flush=True)
