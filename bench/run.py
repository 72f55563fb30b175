#!/usr/bin/env python3
"""`make bench`: what the idempotency filter costs, as ratios against baselines from the same run.

Starts payments-demo, the key store (memory, then Redis on a port of a private redis-server), and
Envoy (--concurrency 1, dynamic base id, every port picked by Envoy and read back from its admin API),
drives them with wrk (bench/lua/*.lua) on 127.0.0.1 only, and writes bench/results/latest.{md,json}.

    python3 bench/run.py            # the whole benchmark (about 7 minutes on 2 cores)
    python3 bench/run.py --smoke    # one ~3 s scenario through the filter; exits 1 if it produced no numbers

Standard library only. Scenarios and targets: bench/README.md.
"""

import argparse
import datetime
import json
import os
import platform
import re
import select
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc_replay
import vm_memory

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA_IDEM = BENCH / "lua" / "idem.lua"
LUA_KS = BENCH / "lua" / "keystore.lua"
LUA_PACED = BENCH / "lua" / "paced.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The renewal scenario: payments-demo holds each request this long, and the filter's lease is short
# enough that every request renews its claim (a third of the lease) at least once while it waits.
SLOW_UPSTREAM_MS = 500
RENEW_LEASE_MS = 600
# first_exec_renew_many: requests in flight at once (wrk connections), so that each tick has many
# claims due and the batching of renewals shows.
MANY_IN_FLIGHT = 64
# The paced scenarios run at this fraction of no_filter_post's saturating rate (the latency target's
# load: below what a first execution can carry, so the added p99 is the filter's, not a queue's).
PACED_FRACTION = 0.4
HMAC_SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
# The not-covered GET: every GET route of payments-demo copies the whole list of payments (it grows
# with every POST of the run), so the GET goes to a path its router answers with 404 at once.
GET_PATH = "/_bench/get"
L2_KEYS = 2000
BODY = b'{"amount":1250,"currency":"EUR","customer":"cus_bench","description":"idempotency benchmark"}'


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- processes


class Procs:
    """Every process this run started; stopped (by pid) at exit."""

    def __init__(self):
        self.procs = []

    def add(self, name, proc):
        self.procs.append((name, proc))
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self):
        for _, proc in reversed(self.procs):
            self.stop(proc)


PROCS = Procs()


def start_listening(name, cmd, tmp, timeout=30):
    """Starts a service that prints `listening on ADDR` on stdout; returns (proc, port)."""
    err = open(tmp / f"{name}.log", "wb")
    proc = PROCS.add(name, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT))
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
            m = re.search(rb"listening on \S+:(\d+)", line)
            if m:
                return proc, int(m.group(1))
        if proc.poll() is not None:
            break
    raise RuntimeError(f"{name} did not print its address; see {tmp / (name + '.log')}")


def http(method, url, body=None, headers=None, timeout=5):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_until(what, check, timeout=60, proc=None):
    """Polls `check` until it returns something truthy (no fixed sleeps for readiness)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        try:
            got = check()
            if got:
                return got
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{what}: not ready after {timeout} s")


class Envoy:
    def __init__(self, binary, name, template, values, tmp):
        self.name = name
        text = string.Template((BENCH / "envoy" / template).read_text()).substitute(values)
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(text)
        admin_path = tmp / f"{name}.admin"
        self.log_path = tmp / f"{name}.log"
        cmd = [
            binary, "-c", str(cfg), "--concurrency", "1", "--use-dynamic-base-id",
            "--admin-address-path", str(admin_path), "--log-level", "info",
            "--log-format", "[%Y-%m-%d %T.%f][%t][%l][%n] %v", "--log-path", str(self.log_path),
            "--disable-hot-restart", "--file-flush-interval-msec", "100",
        ]
        self.t0 = time.time()
        self.proc = PROCS.add(name, subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.stderr", "wb")))
        self.admin = "http://" + wait_until(
            f"{name} admin address", lambda: admin_path.exists() and admin_path.read_text().strip(),
            proc=self.proc)
        wait_until(f"{name} /ready", lambda: http("GET", self.admin + "/ready", timeout=1)[0] == 200,
                   proc=self.proc)
        self.ready_s = time.time() - self.t0
        _, _, body = http("GET", self.admin + "/listeners?format=json")
        self.ports = {}
        for ls in json.loads(body)["listener_statuses"]:
            # an internal listener (the replay listener) has no address
            if "socket_address" in ls.get("local_address", {}):
                self.ports[ls["name"]] = ls["local_address"]["socket_address"]["port_value"]

    def url(self, listener, path):
        return f"http://127.0.0.1:{self.ports[listener]}{path}"

    def stats(self, prefix="wasmcustom.idempotency."):
        _, _, body = http("GET", self.admin + "/stats?filter=" + prefix.replace(".", r"\."))
        out = {}
        for line in body.decode().splitlines():
            k, _, v = line.partition(": ")
            if v.strip().isdigit():
                out[k.removeprefix(prefix)] = int(v)
        return out

    def counter(self, name):
        _, _, body = http("GET", self.admin + "/stats?filter=^" + re.escape(name) + "$")
        m = re.search(r": (\d+)", body.decode())
        return int(m.group(1)) if m else 0

    def memory(self):
        _, _, body = http("GET", self.admin + "/memory")
        m = json.loads(body)
        return {k: int(m[k]) for k in ("allocated", "heap_size", "pageheap_unmapped", "pageheap_free")
                if k in m}

    def stop(self):
        PROCS.stop(self.proc)


# ---------------------------------------------------------------- load


def wrk(url, script, args, duration, conns, threads=2):
    threads = min(threads, conns)  # wrk wants a connection per thread at least
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s", "--timeout", "5s",
           "-s", str(script), url, "--"] + [str(a) for a in args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"^BENCH_JSON (.*)$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no result: {out.stdout}\n{out.stderr}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
    r["conns"] = conns
    r["threads"] = threads
    r["duration_s"] = duration
    return r


def aggregate(rs):
    """Round-robin slices of one scenario: rates from the summed counts, percentiles the median of
    the slices' percentiles."""
    med = lambda xs: sorted(xs)[len(xs) // 2]
    out = {
        "requests": sum(r["requests"] for r in rs), "duration_us": sum(r["duration_us"] for r in rs),
        "errors": {k: sum(r["errors"][k] for r in rs) for k in rs[0]["errors"]},
        "latency_us": {k: med([r["latency_us"][k] for r in rs]) for k in rs[0]["latency_us"]},
        "conns": rs[0]["conns"], "duration_s": sum(r["duration_s"] for r in rs),
        "upstream_posts": sum(r["upstream_posts"] for r in rs),
    }
    for field in ("stats_delta", "keystore_delta", "cpu_s"):
        out[field] = {}
        for r in rs:
            for k, v in r.get(field, {}).items():
                out[field][k] = out[field].get(k, 0) + v
    out["rps"] = out["requests"] / (out["duration_us"] / 1e6) if out["duration_us"] else 0.0
    return out


def keystore_metrics(port):
    _, _, body = http("GET", f"http://127.0.0.1:{port}/metrics")
    out = {}
    for line in body.decode().splitlines():
        m = re.match(r'keystore_requests_total\{op="(\w+)",outcome="(\w+)"\} (\d+)', line)
        if m:
            out[f"{m.group(1)}.{m.group(2)}"] = int(m.group(3))
        # calls per operation (a renew-batch call carries many renewals)
        m = re.match(r'keystore_backend_duration_seconds_count\{backend="[\w-]+",op="(\w+)"\} (\d+)', line)
        if m:
            out[f"{m.group(1)}.calls"] = out.get(f"{m.group(1)}.calls", 0) + int(m.group(2))
        # entries per /v1/batch: the histogram's cumulative buckets
        m = re.match(r'keystore_batch_entries_bucket\{le="([\w.+]+)"\} (\d+)', line)
        if m:
            out[f"batch_le.{m.group(1)}"] = int(m.group(2))
    return out


def batch_sizes(stats, ks):
    """Entries per batch: the mean from the filter's counters (every flight of the root context, a
    batch of one included), the p99 from the key store's histogram of /v1/batch (a bucket's bound)."""
    batches = stats.get("keystore_batches", 0)
    mean = round(stats.get("keystore_batch_entries", 0) / batches, 1) if batches else None
    buckets = sorted(((float(k.split(".", 1)[1]), v) for k, v in ks.items() if k.startswith("batch_le.")))
    total = buckets[-1][1] if buckets else 0
    p99 = next((le for le, n in buckets if total and n >= 0.99 * total), None)
    return {"batches": batches, "batch_mean": mean, "batch_p99_le": p99, "store_batches": total}


def payments_posts(port):
    return json.loads(http("GET", f"http://127.0.0.1:{port}/_demo/stats")[2])["post_requests"]


def delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def cpu_seconds(pid):
    """CPU time (utime + stime, every thread) a process has used, from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()  # fields 3.. of proc(5): utime is 14, stime 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# What a key-store sample is doing, by the frames on its stack (a sample may count in several).
KEYSTORE_FRAMES = {
    "HTTP/2 codec (the h2 crate)": r"(^|;)<?h2::",
    "HTTP/1 codec (hyper::proto::h1)": r"hyper::proto::h1",
    "JSON (serde_json)": r"serde_json",
    "handlers (idempotency_keystore::http)": r"idempotency_keystore::http::",
    "backend (idempotency_keystore::backend)": r"idempotency_keystore::backend",
    "Redis client (the redis crate)": r"(^|;)<?redis::",
    "metrics (prometheus)": r"(^|;)<?prometheus::",
    "allocator (glibc malloc/free, mimalloc)": r"(^|;)(_int_malloc|malloc|_int_free|cfree[@\w.]*|free|"
                                              r"malloc_consolidate|realloc|_?mi_\w+)(;|$)",
    "socket syscalls (send/recv/write/read)": r"\b(__x64_sys_(sendto|recvfrom|write|read|writev))\b",
    "epoll / scheduling (epoll_wait, futex, schedule)": r"\b(__x64_sys_epoll_wait|__x64_sys_futex|schedule|finish_task_switch[\w.]*)\b",
}


def stack_shares(folded, patterns):
    """Lines `share  name` for each pattern: the share of samples (folded `stack count` lines)
    whose stack holds a matching frame."""
    total, hits = 0, {k: 0 for k in patterns}
    compiled = {k: re.compile(v) for k, v in patterns.items()}
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for k, rx in compiled.items():
            if rx.search(stack):
                hits[k] += int(count)
    return "".join(f"{100 * v / max(1, total):6.1f}%  {k}\n" for k, v in hits.items())


def filter_config(cluster, batch=(32, 2), **more):
    """The plugin config of a bench listener. `batch`: (keystore.batch_max_entries,
    keystore.batches_in_flight), the filter's defaults unless --batch-* say otherwise; None for one
    callout per key-store call, as before group commit (the *_unbatched rows)."""
    cfg = {
        "routes": [{"exact": "/payments", "methods": ["POST"], "required": True}],
        "caller": {"header": "authorization"},
        "hmac_secret": HMAC_SECRET,
        "failure_mode": "fail_closed",
        "keystore": {"cluster": cluster, "timeout_ms": 500,
                     "batch_max_entries": batch[0] if batch else 0,
                     "batches_in_flight": batch[1] if batch else 1} if cluster else None,
    }
    cfg.update(more)
    return json.dumps(cfg, separators=(",", ":"))


def redis_scripts():
    """The key store's own claim and complete Lua (keystore/src/backend/redis/scripts.rs), so that
    redis-benchmark runs the same operations; None if the source no longer has that shape."""
    src = (ROOT / "keystore" / "src" / "backend" / "redis" / "scripts.rs").read_text()
    consts = dict(re.findall(r'const (\w+): &str = r"(.*?)";', src, re.S))
    if not all(k in consts for k in ("NOW", "CLAIM", "COMPLETE")):
        return None
    # one line each (the scripts hold no `--` comments), so that redis-benchmark's CSV stays one row
    one = lambda text: " ".join(text.split())
    return one(consts["NOW"] + consts["CLAIM"]), one(consts["NOW"] + consts["COMPLETE"])


def redis_benchmark(port, conns, seconds_hint, script, args):
    """redis-benchmark running EVAL(script) on random keys; returns (rps, p50_ms, p99_ms)."""
    def run(n):
        cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(conns), "-n", str(n),
               "-r", "100000000", "--csv", "EVAL", script, "1", "idem:{__rand_int__}"] + args
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        rows = [line for line in out.splitlines() if line.startswith('"EVAL')]
        if not rows:
            raise RuntimeError("redis-benchmark: " + out)
        # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        cols = [c.strip('"') for c in rows[-1].split('","')][-7:]
        return float(cols[0]), float(cols[3]), float(cols[5])
    rps, _, _ = run(5000)  # warm-up and rate estimate
    return run(max(5000, int(rps * seconds_hint)))


# ---------------------------------------------------------------- the run


class Bench:
    def __init__(self, args):
        self.args = args
        self.d = args.duration
        self.conns = args.connections
        self.rows = []
        self.extra = {}
        previous = BENCH / "results" / "latest.json"
        self.previous = json.loads(previous.read_text()) if previous.exists() else None
        self.notes = []
        self.prefix = f"b{int(time.time())}"
        # processes whose CPU time each slice records (Envoy is added per slice: main or fresh)
        self.pids = {}
        # scenarios whose requests ask payments-demo to hold them (x-demo-delay-ms)
        self.upstream_delay = {name: SLOW_UPSTREAM_MS for name in (
            "no_filter_post_slow", "first_exec_renew", "no_filter_post_slow_many", "first_exec_renew_many")}
        # wrk connections of the scenarios that need more requests in flight than --connections
        self.conns_of = {"no_filter_post_slow_many": MANY_IN_FLIGHT, "first_exec_renew_many": MANY_IN_FLIGHT,
                         "no_filter_post_1c": 1, "first_exec_memory_1c": 1, "first_exec_memory_unbatched_1c": 1}

    def row(self, name, group, r, baseline=None, note="", keystore=None, **kw):
        """One table row. `keystore`: the process name of the key store that took part, whose CPU
        per request goes beside Envoy's."""
        row = {
            "scenario": name, "group": group, "rps": round(r["rps"], 1),
            "p50_ms": r["latency_us"]["p50"] / 1000, "p99_ms": r["latency_us"]["p99"] / 1000,
            "requests": r["requests"], "non_2xx": r["errors"]["status"],
            "socket_errors": sum(v for k, v in r["errors"].items() if k != "status"),
            "conns": r.get("conns"), "duration_s": r.get("duration_s"),
            "baseline": baseline, "note": note,
        }
        if r.get("cpu_s") and r["requests"]:
            per = {k: round(v / r["requests"] * 1e6, 1) for k, v in r["cpu_s"].items()}
            row["cpu_us_per_request"] = per
            row["envoy_cpu_us"] = per.get("envoy")
            row["keystore_cpu_us"] = per.get(keystore) if keystore else None
        row.update(kw)
        if baseline:
            b = self.get(baseline)
            row["ratio"] = round(row["rps"] / b["rps"], 3) if b["rps"] else None
            row["p99_added_ms"] = round(row["p99_ms"] - b["p99_ms"], 3)
        self.rows.append(row)
        log(f"{name}: {row['rps']:.0f} req/s, p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms"
            + (f", Envoy {row['envoy_cpu_us']} us/req" if row.get("envoy_cpu_us") is not None else "")
            + (f", key store {row['keystore_cpu_us']} us/req" if row.get("keystore_cpu_us") is not None else "")
            + (f", ratio {row['ratio']} of {baseline}" if baseline else "")
            + (f", non-2xx {row['non_2xx']}" if row["non_2xx"] else ""))
        return row

    def get(self, name):
        return next(r for r in self.rows if r["scenario"] == name)

    def run(self):
        a = self.args
        self.tmp = Path(tempfile.mkdtemp(prefix="idem-bench-"))
        self.envoy_bin = find_envoy()
        bins = find_bins()
        # BENCH_WASM: another build of the filter (a before/after comparison).
        self.wasm = Path(os.environ.get("BENCH_WASM") or
                         ROOT / "target" / "wasm32-wasip1" / "release" / "idempotency_filter.wasm")
        if not self.wasm.exists():
            raise SystemExit(f"{self.wasm} missing: run `make build`")
        for tool in ["wrk"] + ([] if a.smoke else ["redis-server", "redis-benchmark"]):
            if not shutil.which(tool):
                raise SystemExit(f"{tool} missing: run make setup")
        started = time.time()
        load_before = os.getloadavg()

        pay, self.pay_port = start_listening("payments", [bins["payments"], "--listen", "127.0.0.1:0"], self.tmp)
        ks_mem, self.ks_mem_port = start_listening(
            "keystore-memory", [bins["keystore"], "--listen", "127.0.0.1:0", "--backend", "memory"], self.tmp)
        self.pids.update(payments=pay.pid, keystore_memory=ks_mem.pid)
        if a.smoke:
            self.ks_redis_port = self.ks_mem_port
        else:
            self.redis_port = start_redis(self.tmp)
            ks_redis, self.ks_redis_port = start_listening(
                "keystore-redis", [bins["keystore"], "--listen", "127.0.0.1:0", "--backend", "redis",
                                   "--redis-url", f"redis://127.0.0.1:{self.redis_port}"], self.tmp)
            self.pids.update(keystore_redis=ks_redis.pid,
                             redis=next(p.pid for n, p in PROCS.procs if n == "redis" and p.poll() is None))
            wait_until("keystore-redis /readyz",
                       lambda: http("GET", f"http://127.0.0.1:{self.ks_redis_port}/readyz", timeout=1)[0] == 200)
        b = (self.args.batch_max_entries, self.args.batches_in_flight)
        self.values = {
            "wasm": str(self.wasm), "root": ROOT, "payments_port": self.pay_port, "ks_mem_port": self.ks_mem_port,
            "ks_redis_port": self.ks_redis_port,
            "filter_config_mem": filter_config("ks_mem", b), "filter_config_redis": filter_config("ks_redis", b),
            "filter_config_l1": filter_config(None),
            "filter_config_l1_only": filter_config(None),
            "filter_config_detached": filter_config(
                "ks_mem", routes=[{"exact": "/payments", "methods": ["POST"], "required": True,
                                   "execution": "detached", "upstream_cluster": "payments",
                                   "in_flight": "wait", "max_wait_ms": 5000}]),
            # replay from L2: one L1 slot of 512 + 4096 bytes holds about 15 records of ~300 bytes
            "filter_config_l2": filter_config("ks_mem", b, l1_slots=1, max_response_bytes=512),
            "filter_config_renew": filter_config("ks_mem", b, lock_lease_ms=RENEW_LEASE_MS),
            "filter_config_mem_h1": filter_config("ks_mem_h1", b),
            "filter_config_mem_unbatched": filter_config("ks_mem", None),
            "filter_config_redis_unbatched": filter_config("ks_redis", None),
            # VM memory per in-flight detached request: no key store, payments-demo holds each request
            "filter_config_vm_memory": filter_config(
                None, routes=[{"exact": "/payments", "methods": ["POST"], "required": True,
                               "execution": "detached", "upstream_cluster": "payments",
                               "upstream_timeout_ms": 60000}]),
            # gRPC replays (bench/grpc_replay.py): one rule, no key store (L1 holds the record)
            "filter_config_grpc_routed": filter_config(
                None, routes=[{"exact": "/test.Echo/Call", "methods": ["POST"], "required": True}],
                routed_replay=True),
            "filter_config_grpc_local": filter_config(
                None, routes=[{"exact": "/test.Echo/Call", "methods": ["POST"], "required": True}]),
            "filter_config_grpc_listener": filter_config(None, replay_listener=True),
            # gRPC first executions: every call a fresh key (bench/envoy/grpc.yaml.tmpl)
            "filter_config_grpc_first": filter_config(
                None, routes=[{"exact": "/test.Echo/Call", "methods": ["POST"], "required": True}],
                routed_replay=True),
            # how Envoy speaks to the key store: HTTP/2 (h2c) as shipped, or HTTP/1.1 to compare
            "ks_http": "http_protocol_options" if a.keystore_http1 else "http2_protocol_options",
        }
        self.envoy = Envoy(self.envoy_bin, "envoy-main", "main.yaml.tmpl", self.values, self.tmp)
        log(f"envoy-main ready in {self.envoy.ready_s:.2f} s, listeners {self.envoy.ports}")

        if a.smoke:
            self.smoke()
        else:
            self.full()
        self.extra["load_average_before"] = [round(x, 2) for x in load_before]
        self.extra["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        self.extra["wall_s"] = round(time.time() - started, 1)

    # ------------------------------------------------------------ smoke

    def smoke(self):
        e = self.envoy
        posts = payments_posts(self.pay_port)
        r = self.wrk_cpu(e.url("filter_mem", "/payments"), LUA_IDEM,
                         ["POST", "/payments", "fresh", 0, self.prefix + "smk"], 3, 8, envoy=e)
        row = self.row("smoke_first_exec_memory", "3. first execution", r, keystore="keystore_memory")
        executed = e.stats().get("executed", 0)
        ran = payments_posts(self.pay_port) - posts
        # requests cut off when wrk stops may count as executed without reaching the upstream: at most
        # one per connection
        ok = (row["rps"] > 0 and row["p99_ms"] > 0 and row["non_2xx"] == 0 and ran > 0
              and 0 <= executed - ran <= 8)
        log(f"smoke: executed {executed}, upstream POSTs {ran}: {'ok' if ok else 'FAILED'}")
        if not ok:
            raise SystemExit(1)
        # a small burst for the VM memory measurement, so that its code runs in make test
        v = self.vm_memory(40, 100_000, 1500)
        ok = (v["answered_201"] == v["requests"] == v["upstream_posts"] and v["vms"] > 0
              and v.get("vm_bytes_per_in_flight") is not None and v["peak_in_flight"] > 0)
        log(f"smoke: VM memory burst {v['statuses']}, {v['vms']} VMs found: {'ok' if ok else 'FAILED'}")
        if not ok:
            raise SystemExit(1)

    def vm_memory(self, n, body_bytes, hold_ms):
        """VM memory per in-flight detached request (bench/vm_memory.py), on an Envoy of its own."""
        env = Envoy(self.envoy_bin, "envoy-vm-memory", "vm_memory.yaml.tmpl", self.values, self.tmp)
        url = env.url("filter_detached", "/payments")
        # one request first, so that what the VM creates lazily exists before the "before" reading
        http("POST", url, BODY, {"content-type": "application/json", "authorization": "Bearer warm",
                                 "idempotency-key": f'"{self.prefix}vmw"'})
        log(f"VM memory: {n} concurrent detached POSTs of {body_bytes} bytes, upstream holding {hold_ms} ms")
        v = vm_memory.burst(http, url, lambda: payments_posts(self.pay_port), env.proc.pid, n, body_bytes,
                            hold_ms, self.prefix + "vm")
        env.stop()
        self.extra["vm_memory"] = v
        log(f"VM memory: {v.get('vm_bytes_per_in_flight')} bytes of linear memory and "
            f"{v['rss_bytes_per_in_flight']} bytes of Envoy RSS per in-flight request "
            f"(peak in flight {v['peak_in_flight']}, answers {v['statuses']})")
        return v

    # ------------------------------------------------------------ full

    # The Envoy scenarios of the main Envoy: name -> (group, listener, method, path, key mode, n,
    # baseline, note). They run round-robin, `--rounds` slices of `--duration` / rounds seconds each,
    # so that every scenario and its baseline see the same background load (others compile on this
    # machine): the ratios are what count.
    def scenarios(self):
        a, c = self.args, self.conns
        batched = (f"; key-store calls in batches (batch_max_entries {a.batch_max_entries}, batches_in_flight "
                   f"{a.batches_in_flight}: the filter's default)")
        unbatched = "one callout per key-store call (batch_max_entries 0, as before group commit)"
        return {
            "no_filter_post": ("1. baseline", "no_filter", "POST", "/payments", "none", 0, None,
                               "Envoy, no filter, POST /payments to payments-demo"),
            "no_filter_post_slow": ("1. baseline", "no_filter", "POST", "/payments", "none", 0, None,
                                    f"as no_filter_post, payments-demo holding each request {SLOW_UPSTREAM_MS} ms"),
            "no_filter_get": ("1. baseline", "no_filter", "GET", GET_PATH, "none", 0, None,
                              f"Envoy, no filter, GET {GET_PATH} (payments-demo answers 404)"),
            "direct_response": ("1. baseline", "direct", "POST", "/payments", "none", 0, None,
                                "Envoy direct_response 201, no upstream"),
            "not_covered_get": ("2. not covered", "filter_mem", "GET", GET_PATH, "none", 0, "no_filter_get",
                                f"GET {GET_PATH} on the filter listener (the route does not enable the filter)"),
            "not_covered_post": ("2. not covered", "filter_mem", "POST", "/nr/payments", "none", 0,
                                 "no_filter_post", "POST /nr/payments: a route that does not enable the filter (rewritten to /payments)"),
            "first_exec_memory": ("3. first execution", "filter_mem", "POST", "/payments", "fresh", 0,
                                  "no_filter_post", "fresh key per request, key store memory backend" + batched),
            "first_exec_redis": ("3. first execution", "filter_redis", "POST", "/payments", "fresh", 0,
                                 "no_filter_post", "fresh key per request, key store Redis backend" + batched),
            "first_exec_memory_unbatched": ("3. first execution", "filter_mem_unbatched", "POST", "/payments",
                                            "fresh", 0, "no_filter_post", "as first_exec_memory, " + unbatched),
            "first_exec_redis_unbatched": ("3. first execution", "filter_redis_unbatched", "POST", "/payments",
                                           "fresh", 0, "no_filter_post", "as first_exec_redis, " + unbatched),
            # one connection: a quiet gateway, where a batch never waits (p50 against the unbatched one)
            "no_filter_post_1c": ("1. baseline", "no_filter", "POST", "/payments", "none", 0, None,
                                  "as no_filter_post, 1 connection"),
            "first_exec_memory_unbatched_1c": ("3. first execution", "filter_mem_unbatched", "POST", "/payments",
                                               "fresh", 0, "no_filter_post_1c",
                                               "as first_exec_memory_unbatched, 1 connection"),
            "first_exec_memory_1c": ("3. first execution", "filter_mem", "POST", "/payments", "fresh", 0,
                                     "first_exec_memory_unbatched_1c",
                                     "as first_exec_memory, 1 connection; ratio and p50 against the unbatched"),
            "first_exec_l1_only": ("3. first execution", "filter_l1", "POST", "/payments", "fresh", 0,
                                   "no_filter_post",
                                   "fresh key per request, no key store (L1 only): the filter without callouts"),
            "first_exec_memory_http1": ("3. first execution", "filter_mem_h1", "POST", "/payments", "fresh", 0,
                                        "first_exec_memory",
                                        "as first_exec_memory, Envoy to the key store over HTTP/1.1 (a connection "
                                        "pool); ratio to first_exec_memory (HTTP/2, one connection)"),
            "first_exec_renew": ("3. first execution", "filter_renew", "POST", "/payments", "fresh", 0,
                                 "no_filter_post_slow",
                                 f"fresh key per request, upstream {SLOW_UPSTREAM_MS} ms, lease {RENEW_LEASE_MS} ms: "
                                 f"the claim is renewed every {RENEW_LEASE_MS // 3} ms while the upstream works"),
            "no_filter_post_slow_many": ("1. baseline", "no_filter", "POST", "/payments", "none", 0, None,
                                         f"as no_filter_post_slow, {MANY_IN_FLIGHT} connections"),
            "first_exec_renew_many": ("3. first execution", "filter_renew", "POST", "/payments", "fresh", 0,
                                      "no_filter_post_slow_many",
                                      f"as first_exec_renew, {MANY_IN_FLIGHT} connections: many claims due at each "
                                      "tick, renewed in one renew-batch call"),
            "replay_l1": ("4. replay", "filter_mem", "POST", "/payments", "cycle", a.l1_keys, "direct_response",
                          f"{a.l1_keys} pre-recorded keys cycled"),
            "duplicates_storm": ("5. duplicates", "filter_mem", "POST", "/payments", "storm", a.storm_group,
                                 "no_filter_post", f"{2 * c} connections, ~{a.storm_group} requests per key"),
            "first_exec_detached": ("3. first execution", "filter_detached", "POST", "/payments", "fresh", 0,
                                    "first_exec_memory",
                                    "fresh key per request, detached execution (key store memory backend); "
                                    "ratio to the inline first execution"),
            "wait_storm": ("5. duplicates", "filter_detached", "POST", "/payments", "storm", a.storm_group,
                           "duplicates_storm",
                           f"as duplicates_storm, but duplicates wait for the record (in_flight: wait); "
                           "ratio to the inline storm, whose duplicates get 409"),
        }

    def cpu(self, envoy=None):
        """CPU seconds so far of every process that may take part in a scenario."""
        pids = dict(self.pids)
        if envoy is not None:
            pids["envoy"] = envoy.proc.pid
        return {k: cpu_seconds(pid) for k, pid in pids.items()}

    def slice_run(self, envoy, name, spec, seconds, rnd, rate=None):
        """One wrk slice of a scenario with its counters: the filter's stats, upstream POSTs, the
        key store's answers and every process's CPU time, as deltas over exactly this slice.
        `rate`: total requests per second, paced (bench/lua/paced.lua); None: as fast as it goes."""
        group, listener, method, path, mode, n, baseline, note = spec
        prefix = self.prefix + (name if mode == "cycle" else f"{name}{rnd}")
        conns = self.conns_of.get(name, 2 * self.conns if mode == "storm" else self.conns)
        args = [method, path, mode, n, prefix, self.upstream_delay.get(name, 0)]
        script = LUA_IDEM
        if rate is not None:
            script, args = LUA_PACED, args + [rate / 2]  # wrk's 2 threads share the rate
        ks = self.keystore_of(listener)
        st0, posts0 = envoy.stats(), payments_posts(self.pay_port)
        ks0 = keystore_metrics(ks[1]) if ks else {}
        cpu0 = self.cpu(envoy)
        r = wrk(envoy.url(listener, path), script, args, seconds, conns)
        cpu1 = self.cpu(envoy)
        r["cpu_s"] = {k: cpu1[k] - cpu0[k] for k in cpu0}
        r["stats_delta"] = delta(envoy.stats(), st0)
        r["keystore_delta"] = delta(keystore_metrics(ks[1]), ks0) if ks else {}
        r["upstream_posts"] = payments_posts(self.pay_port) - posts0
        return r

    def keystore_of(self, listener):
        """(process name, port) of the key store behind a listener, None without one."""
        if listener in ("filter_redis", "filter_redis_unbatched"):
            return ("keystore_redis", self.ks_redis_port)
        if listener in ("filter_mem", "filter_detached", "filter_renew", "filter_mem_h1",
                        "filter_mem_unbatched"):
            return ("keystore_memory", self.ks_mem_port)
        return None

    def full(self):
        a, e, c = self.args, self.envoy, self.conns
        p = self.prefix
        specs = self.scenarios()
        if a.only == "vm_memory":
            self.vm_memory(a.vm_burst, a.vm_body_bytes, a.vm_hold_ms)
            return
        if a.only:
            # the named scenarios, their baselines, and the baselines' baselines
            wanted = {o for o in a.only.split(",") if o in specs}
            while True:
                more = {specs[w][6] for w in wanted if specs[w][6]} - wanted
                if not more:
                    break
                wanted |= more
            specs = {k: v for k, v in specs.items() if k in wanted}

        log("warm-up")
        for name in ("no_filter_post", "direct_response", "first_exec_memory", "first_exec_redis",
                     "first_exec_l1_only", "first_exec_detached", "first_exec_memory_http1",
                     "first_exec_memory_unbatched", "first_exec_redis_unbatched"):
            if name in specs:
                self.slice_run(e, name, specs[name], a.warmup, "w")

        # 4. replay from L1: record the keys once (sequentially), then the wrk slices cycle over them
        if "replay_l1" in specs:
            for i in range(a.l1_keys):
                k = f'"{p}replay_l1-c-{i}"'
                s, _, _ = http("POST", e.url("filter_mem", "/payments"), BODY,
                               {"content-type": "application/json", "authorization": "Bearer bench-caller",
                                "idempotency-key": k})
                if s != 201:
                    raise RuntimeError(f"pre-recording key {i}: {s}")

        slices = {k: [] for k in specs}
        per = max(1, round(a.duration / a.rounds))
        for rnd in range(a.rounds):
            log(f"round {rnd + 1}/{a.rounds}: {len(specs)} scenarios x {per} s")
            for name, spec in specs.items():
                slices[name].append(self.slice_run(e, name, spec, per, rnd))
        if a.profile in specs:
            self.profile(e, a.profile, specs[a.profile])
        for name, spec in specs.items():
            group, _, _, _, mode, _, baseline, note = spec
            rs = slices[name]
            if not rs:
                continue
            agg = aggregate(rs)
            st = agg["stats_delta"]
            extra = {"stats_delta": st, "upstream_posts": agg["upstream_posts"], "rounds": len(rs)}
            if name == "replay_l1":
                note += f"; upstream POSTs during the runs: {agg['upstream_posts']}"
            if name == "wait_storm":
                note += (f": executed {st.get('executed', 0)}, replayed {st.get('replayed', 0)}, "
                         f"waited {st.get('waited', 0)}, wait_replayed {st.get('wait_replayed', 0)}, "
                         f"409 {st.get('conflict', 0)}, upstream POSTs {agg['upstream_posts']}")
            if name == "duplicates_storm":
                note += (f": executed {st.get('executed', 0)}, replayed {st.get('replayed', 0)}, "
                         f"409 {st.get('conflict', 0)}, upstream POSTs {agg['upstream_posts']}")
            if name.startswith("first_exec"):
                note += f"; executed {st.get('executed', 0)} = upstream POSTs {agg['upstream_posts']}"
            if name.startswith("first_exec_renew"):
                kd = agg["keystore_delta"]
                renewed = kd.get("renew.renewed", 0) + kd.get("renew_batch.renewed", 0)
                calls = kd.get("renew.calls", 0) + kd.get("renew_batch.calls", 0)
                extra["renewals"] = renewed
                extra["renewal_calls"] = calls
                note += (f"; key-store renewals {renewed} ({renewed / max(1, agg['requests']):.1f} per request) "
                         f"in {calls} calls")
            if st.get("keystore_batches"):
                extra.update(batch_sizes(st, agg["keystore_delta"]))
                note += (f"; {extra['batches']} batch callouts, entries per batch mean {extra['batch_mean']} "
                         f"(key store: p99 <= {extra['batch_p99_le']})")
            ks = self.keystore_of(spec[1])
            self.row(name, group, agg, baseline=baseline, note=note, keystore=ks and ks[0], **extra)
        if "first_exec_memory" in specs and "no_filter_post" in specs:
            self.paced()
        if all(n in specs for n in SWEEP) and a.sweep_points:
            self.sweep()
        if not a.only or "grpc_replay" in a.only.split(","):
            grpc_replay.measure(self, Envoy, PROCS, log, a.rounds, max(1, round(a.duration / a.rounds)))
        if a.only and "replay_l2" not in a.only.split(","):
            return

        # 4. replay from L2: record L2_KEYS keys through the main Envoy, then a fresh Envoy whose L1 is
        # one small slot cycles over them (so nearly every replay is an L1 miss and an L2 hit),
        # interleaved with direct_response slices on the same fresh Envoy.
        pre = p + "replay_l2"  # slice_run's prefix for the cycling scenario replay_l2
        st0 = e.stats()
        for _ in range(20):
            wrk(e.url("filter_mem", "/payments"), LUA_IDEM, ["POST", "/payments", "cycle", L2_KEYS, pre], 1, c)
            if delta(e.stats(), st0).get("executed", 0) >= L2_KEYS:
                break
        recorded = delta(e.stats(), st0).get("executed", 0)
        fresh = Envoy(self.envoy_bin, "envoy-fresh", "fresh.yaml.tmpl", self.values, self.tmp)
        self.extra["vm_start"] = vm_start(fresh)
        l2s, ds = [], []
        for rnd in range(a.rounds):
            for name, out in (("replay_l2", l2s), ("direct_response_fresh", ds)):
                spec = ("4. replay", "filter_mem" if name == "replay_l2" else "direct", "POST", "/payments",
                        "cycle", L2_KEYS, None, "")
                out.append(self.slice_run(fresh, name, spec, per, rnd))
        if a.profile == "replay_l2":
            self.profile(fresh, "replay_l2", ("4. replay", "filter_mem", "POST", "/payments", "cycle", L2_KEYS,
                                              None, ""))
        self.row("direct_response_fresh", "1. baseline", aggregate(ds),
                 note="direct_response on the fresh Envoy, interleaved with replay_l2")
        agg = aggregate(l2s)
        st = agg["stats_delta"]
        from_l2 = agg["keystore_delta"].get("claim.completed", 0)
        sizes = batch_sizes(st, agg["keystore_delta"]) if st.get("keystore_batches") else {}
        self.row("replay_l2", "4. replay", agg, baseline="direct_response_fresh", keystore="keystore_memory",
                 note=(f"fresh Envoy, L1 of one small slot; cycling over {recorded} keys recorded through the main "
                       f"Envoy: {from_l2} of {st.get('replayed', 0)} replays came from the key store; "
                       f"upstream POSTs {agg['upstream_posts']}"
                       + (f"; entries per batch mean {sizes['batch_mean']} (key store: p99 <= "
                          f"{sizes['batch_p99_le']})" if sizes else "")),
                 **sizes, replayed=st.get("replayed", 0), from_l2=from_l2, stats_delta=st, upstream_posts=agg["upstream_posts"])
        fresh.stop()
        if a.only:
            return

        # 6. the key store alone
        self.keystore_alone()

        # 7. memory
        self.envoy.stop()
        self.memory()
        # 8. VM memory per in-flight detached request
        self.vm_memory(a.vm_burst, a.vm_body_bytes, a.vm_hold_ms)

    def paced(self):
        """The latency target's scenario: first execution (batched and not) and no filter, paced at
        PACED_FRACTION of the no-filter saturating rate measured in this run, interleaved like the
        other scenarios."""
        a, e = self.args, self.envoy
        base = self.get("no_filter_post")
        rate = round(base["rps"] * PACED_FRACTION)
        specs = self.scenarios()
        runs = {"no_filter_post_paced": [], "first_exec_memory_paced": [], "first_exec_memory_unbatched_paced": []}
        per = max(1, round(a.duration / a.rounds))
        log(f"paced at {rate} req/s ({PACED_FRACTION} of no_filter_post's {base['rps']:.0f})")
        for rnd in range(a.rounds):
            for name in runs:
                spec = specs[name.removesuffix("_paced")]
                runs[name].append(self.slice_run(e, name, spec, per, rnd, rate=rate))
        for name, rs in runs.items():
            agg = aggregate(rs)
            achieved = agg["rps"] / rate
            baseline = None if name.startswith("no_filter") else "no_filter_post_paced"
            note = (f"paced at {rate} req/s ({PACED_FRACTION} of no_filter_post's saturating rate), achieved "
                    f"{achieved:.0%} of it")
            ks = self.keystore_of(specs[name.removesuffix("_paced")][1])
            sizes = batch_sizes(agg["stats_delta"], agg["keystore_delta"]) if agg["stats_delta"].get(
                "keystore_batches") else {}
            if sizes:
                note += f"; entries per batch mean {sizes['batch_mean']} (key store: p99 <= {sizes['batch_p99_le']})"
            self.row(name, "3. first execution" if baseline else "1. baseline", agg, baseline=baseline,
                     note=note, keystore=ks and ks[0], paced_rps=rate, achieved=round(achieved, 3),
                     stats_delta=agg["stats_delta"], upstream_posts=agg["upstream_posts"], **sizes)

    def sweep(self):
        """Latency against offered load: each scenario of SWEEP paced at fractions of no_filter_post's
        saturating rate (this run's), one slice per load and scenario, interleaved; p50 and p99 per
        point go to extra["sweep"] and to the plot results/latency-vs-load.png."""
        a, e = self.args, self.envoy
        top = self.get("no_filter_post")["rps"]
        specs = self.scenarios()
        points = []
        fractions = [round(0.8 * (i + 1) / a.sweep_points, 3) for i in range(a.sweep_points)]
        log(f"sweep: {len(SWEEP)} scenarios at {fractions} of {top:.0f} req/s, {a.sweep_seconds} s each")
        for f in fractions:
            rate = max(50, round(top * f))
            for name in SWEEP:
                r = self.slice_run(e, name, specs[name], a.sweep_seconds, f"s{f}", rate=rate)
                points.append({"scenario": name, "offered_rps": rate, "achieved_rps": round(r["rps"], 1),
                               "p50_ms": r["latency_us"]["p50"] / 1000, "p99_ms": r["latency_us"]["p99"] / 1000})
        self.extra["sweep"] = points
        if not a.no_write and not a.smoke:
            plot_sweep(points, BENCH / "results" / "latency-vs-load.png")

    def profile(self, envoy, name, spec):
        """perf record -g (cpu-clock: this machine has no hardware counters) on Envoy and on the
        key store taking part, during one extra slice of --profile-seconds (not in the table).
        Envoy's binary is stripped: its report is by object (Envoy, V8's JIT code for the Wasm
        filter, kernel, libc) and by the symbols that exist (kernel, libc). The key store, built
        with debug info (BENCH_BIN_DIR), is recorded with DWARF call graphs and drawn as a flame
        graph when inferno is installed. Files: bench/results/profile-<name>-{envoy,keystore}.*"""
        targets = {"envoy": (envoy.proc.pid, "fp")}
        ks = self.keystore_of(spec[1])
        if ks:
            targets["keystore"] = (self.pids[ks[0]], "dwarf,16384")
        recs = {}
        for who, (pid, graph) in targets.items():
            data = self.tmp / f"perf-{name}-{who}.data"
            recs[who] = (data, subprocess.Popen(
                ["perf", "record", "-e", "cpu-clock", "-F", "499", "--call-graph", graph, "-p", str(pid),
                 "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        r = self.slice_run(envoy, name, spec, self.args.profile_seconds, "p")
        for _, rec in recs.values():
            rec.send_signal(signal.SIGINT)
            rec.wait(timeout=120)
        cpu = ", ".join(f"{k} {v / r['requests'] * 1e6:.0f} us" for k, v in r["cpu_s"].items() if v > 0)
        head = (f"# perf record -e cpu-clock -F 499 -g during {name}: {r['rps']:.0f} req/s, {r['requests']} requests"
                f" in {self.args.profile_seconds} s (perf itself slows them); CPU per request: {cpu}\n")
        out = BENCH / "results"
        for who, (data, _) in recs.items():
            report = lambda sort: subprocess.run(
                ["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio", "-g", "none",
                 "--percent-limit", "0.5"], capture_output=True, text=True).stdout
            text = "\n".join(line.rstrip() for line in (report("dso") + report("dso,sym")).splitlines()
                             if line.strip("# \n") and not line.startswith(("# (Tip", "# To display")))
            (out / f"profile-{name}-{who}.txt").write_text(head + text + "\n")
            log(f"profile written to {out / f'profile-{name}-{who}.txt'}")
        if "keystore" in recs and shutil.which("inferno-collapse-perf") and shutil.which("inferno-flamegraph"):
            script = subprocess.run(["perf", "script", "-i", str(recs["keystore"][0])], capture_output=True).stdout
            folded = subprocess.run(["inferno-collapse-perf"], input=script, capture_output=True).stdout
            svg = subprocess.run(["inferno-flamegraph", "--title", f"key store during {name}"], input=folded,
                                 capture_output=True).stdout
            (out / f"profile-{name}-keystore.svg").write_bytes(svg)
            with open(out / f"profile-{name}-keystore.txt", "a") as f:
                f.write("\n# Share of the key store's samples whose stack holds a frame matching (inclusive):\n"
                        + stack_shares(folded.decode(errors="replace"), KEYSTORE_FRAMES))
            log(f"flame graph written to {out / f'profile-{name}-keystore.svg'}")

    def wrk_cpu(self, *args, envoy=None, **kw):
        """wrk, with every process's CPU time over the run (Envoy's too, if given)."""
        cpu0 = self.cpu(envoy)
        r = wrk(*args, **kw)
        cpu1 = self.cpu(envoy)
        r["cpu_s"] = {k: cpu1[k] - cpu0[k] for k in cpu0}
        return r

    def keystore_alone(self):
        a, d, c = self.args, self.d, self.conns
        ks_c = a.keystore_connections
        for backend, port in [("memory", self.ks_mem_port), ("redis", self.ks_redis_port)]:
            url = f"http://127.0.0.1:{port}/v1/claim"
            proc = f"keystore_{backend}"
            r = self.wrk_cpu(url, LUA_KS, ["claim", "", 0], d, ks_c, threads=ks_c)
            self.row(f"keystore_{backend}_claim", "6. key store", r, keystore=proc,
                     note=f"POST /v1/claim, fresh keys, {ks_c} connections", outcomes=r["outcomes"])
            # one connection per wrk thread: a claim's answer carries no key (see keystore.lua)
            r = self.wrk_cpu(url, LUA_KS, ["claim_complete", "", 0], d, ks_c, threads=ks_c)
            self.row(f"keystore_{backend}_claim_complete", "6. key store", r, keystore=proc,
                     note=f"claim then complete (half each), {ks_c} connections", outcomes=r["outcomes"])
            for i in range(200):
                k = f"{i:064x}"
                _, _, b = http("POST", url, json.dumps({"key": k, "fingerprint": "ab" * 32, "lease_ms": 30000}).encode(),
                               {"content-type": "application/json"})
                tok = json.loads(b).get("token")
                if tok:
                    http("POST", url.replace("claim", "complete"),
                         json.dumps({"key": k, "token": tok, "record": "cmVjb3Jk", "retention_ms": 600000}).encode(),
                         {"content-type": "application/json"})
            r = self.wrk_cpu(url, LUA_KS, ["get", "", 200], d, ks_c, threads=ks_c)
            self.row(f"keystore_{backend}_get", "6. key store", r, keystore=proc,
                     note=f"POST /v1/claim on 200 completed keys (a replay's L2 lookup), {ks_c} connections",
                     outcomes=r["outcomes"])
        scripts = redis_scripts()
        if not scripts:
            self.notes.append("redis-benchmark skipped: the key store's Redis scripts were not found")
            return
        claim, complete = scripts
        try:
            rc = redis_benchmark(self.redis_port, ks_c, d, claim, ["ab" * 32, "tok" * 10, "30000"])
            rm = redis_benchmark(self.redis_port, ks_c, d, complete, ["tok" * 10, "x" * 150, "600000"])
        except RuntimeError as e:
            # a script redis-benchmark cannot run (e.g. the key store's scripts changed shape) costs
            # this comparison, not the rest of the results
            self.notes.append(f"redis-benchmark failed, comparison skipped: {str(e)[:200]}")
            log(f"redis-benchmark failed: {e}")
            return
        mixed = 2 / (1 / rc[0] + 1 / rm[0])
        self.extra["redis_benchmark"] = {"claim_eval": rc, "complete_eval": rm, "mixed_rps": round(mixed, 1)}
        for name, (rps, p50, p99), base in [("redis_benchmark_claim_eval", rc, "keystore_redis_claim"),
                                            ("redis_benchmark_complete_eval", rm, None)]:
            row = {"scenario": name, "group": "6. key store", "rps": rps, "p50_ms": p50, "p99_ms": p99,
                   "requests": None, "non_2xx": 0, "socket_errors": 0, "conns": ks_c, "duration_s": d,
                   "baseline": None, "note": "redis-benchmark EVAL of the key store's own script, random keys"}
            self.rows.append(row)
            log(f"{name}: {rps:.0f} ops/s, p50 {p50} ms, p99 {p99} ms")
        # the key store's ratios to redis-benchmark (the same Redis operations, same concurrency)
        kc = self.get("keystore_redis_claim")
        kc["baseline"], kc["ratio"] = "redis_benchmark_claim_eval", round(kc["rps"] / rc[0], 3)
        km = self.get("keystore_redis_claim_complete")
        km["baseline"], km["ratio"] = "redis_benchmark mixed claim+complete", round(km["rps"] / mixed, 3)
        for b in ("memory",):
            for op in ("claim", "claim_complete", "get"):
                r = self.get(f"keystore_{b}_{op}")
                r["baseline"] = f"keystore_redis_{op}"
                r["ratio"] = round(r["rps"] / self.get(f"keystore_redis_{op}")["rps"], 3)

    def memory(self):
        a, c = self.args, self.conns
        env = Envoy(self.envoy_bin, "envoy-memory", "memory.yaml.tmpl", self.values, self.tmp)
        self.extra["vm_start_memory_envoy"] = vm_start(env)
        url = env.url("filter_l1", "/payments")
        # a few requests so that every lazily created structure exists before the "before" reading
        wrk(url, LUA_IDEM, ["POST", "/payments", "fresh", 0, self.prefix + "mw"], 1, c)
        before = env.memory()
        st0 = env.stats()
        curve, keys, t0 = [], 0, time.monotonic()
        while keys < a.memory_keys and time.monotonic() - t0 < a.memory_seconds:
            chunk = min(a.memory_chunk, a.memory_seconds - (time.monotonic() - t0))
            r = wrk(url, LUA_IDEM, ["POST", "/payments", "fresh", 0, f"{self.prefix}m{len(curve)}"],
                    max(1, int(chunk)), c)
            keys = delta(env.stats(), st0).get("executed", 0)
            m = env.memory()
            curve.append({"keys": keys, "rps": round(r["rps"], 1), "p99_ms": r["latency_us"]["p99"] / 1000,
                          "allocated": m["allocated"], "heap_size": m["heap_size"]})
            log(f"memory: {keys} keys, {r['rps']:.0f} req/s, allocated {m['allocated'] / 2**20:.1f} MiB, "
                f"heap {m['heap_size'] / 2**20:.1f} MiB")
        after = env.memory()
        env.stop()
        slots, max_resp = 1024, 65536
        bound = slots * (max_resp + 4096)
        grow_alloc = after["allocated"] - before["allocated"]
        grow_heap = after["heap_size"] - before["heap_size"]
        self.extra["memory"] = {
            "keys": keys, "target_keys": a.memory_keys, "before": before, "after": after,
            "growth_allocated": grow_alloc, "growth_heap_size": grow_heap,
            "l1_bound_bytes": bound, "l1_bound_formula": "l1_slots x (max_response_bytes + 4 KiB) = 1024 x 69632",
            "curve": curve, "wasm_bytes": self.wasm.stat().st_size,
        }

    # ------------------------------------------------------------ report

    def targets(self):
        t = []
        g = lambda n: next((r for r in self.rows if r["scenario"] == n), None)

        def add(name, value, goal, met, detail):
            t.append({"target": name, "value": value, "goal": goal, "met": met, "detail": detail})

        for name, goal, what in (("first_exec_memory", 0.55, "memory"), ("first_exec_redis", 0.5, "Redis")):
            r, u = g(name), g(name + "_unbatched")
            if r:
                add(f"first execution ({what} key store) >= {goal} of no-filter", r["ratio"], goal,
                    r["ratio"] >= goal, f"{r['rps']:.0f} vs {g('no_filter_post')['rps']:.0f} req/s"
                    + (f"; unbatched {u['ratio']} in the same run" if u else ""))
        if g("first_exec_memory_1c") and g("first_exec_memory_unbatched_1c"):
            r, u = g("first_exec_memory_1c"), g("first_exec_memory_unbatched_1c")
            v = round(r["p50_ms"] / u["p50_ms"], 3)
            add("1 connection: batched first execution p50 within 5 % of the unbatched one", v, 1.05, v <= 1.05,
                f"p50 {r['p50_ms']} vs {u['p50_ms']} ms; {r['rps']:.0f} vs {u['rps']:.0f} req/s")
        if g("first_exec_memory_paced"):
            r, b = g("first_exec_memory_paced"), g("no_filter_post_paced")
            ok = r["p99_added_ms"] <= 3.0 and r["achieved"] >= 0.95 and b["achieved"] >= 0.95
            add(f"first execution p99 added <= 3 ms at {PACED_FRACTION} of the no-filter saturating rate",
                r["p99_added_ms"], 3.0, ok,
                f"p99 {r['p99_ms']} vs {b['p99_ms']} ms at {r['paced_rps']} req/s; achieved {r['achieved']:.0%} "
                f"and {b['achieved']:.0%} of that rate (below 95 %: missed)")
        if g("replay_l2"):
            r = g("replay_l2")
            add("replay from the key store on a fresh Envoy >= 0.8 of direct_response", r["ratio"], 0.8,
                r["ratio"] >= 0.8, f"{r.get('from_l2')} of {r.get('replayed')} replays from the key store")
        if g("keystore_redis_claim") and g("keystore_redis_claim").get("ratio") is not None:
            kc, km = g("keystore_redis_claim"), g("keystore_redis_claim_complete")
            v = min(kc["ratio"], km["ratio"])
            add("key store (Redis) >= 0.8 of redis-benchmark, same ops and concurrency", v, 0.8, v >= 0.8,
                f"claim {kc['ratio']}, claim+complete {km['ratio']} (the lower counts)")
        if g("replay_l1"):
            r = g("replay_l1")
            add("replay from L1 >= 0.75 of direct_response, no upstream request", r["ratio"], 0.75,
                r["ratio"] >= 0.75 and r["upstream_posts"] == 0, f"upstream POSTs during the run: {r['upstream_posts']}")
        if not self.args.only:
            renew, detached = g("first_exec_renew"), g("first_exec_detached")
            shown = bool(renew and detached and renew.get("renewals"))
            add("the table shows the renewal and detached rows", "yes" if shown else "no", "yes", shown,
                f"renewals {renew.get('renewals') if renew else None}, detached "
                f"{detached['rps'] if detached else None} req/s")
        worse = self.worse_than_before()
        if worse is not None:
            add("no row gets worse (a ratio to a baseline below 0.9 x the previous results file's)", len(worse), 0, not worse,
                "; ".join(worse) or f"compared with {self.previous.get('date')}")
        m = self.extra.get("memory")
        if m:
            limit = m["l1_bound_bytes"] * 1.1
            ext = "" if m["keys"] >= m["target_keys"] else (
                f"; {m['keys']} keys measured, not {m['target_keys']}: L1 is full (every slot at its budget, "
                f"oldest records evicted) once the curve is flat, so more keys add nothing: see the curve")
            for what in ("allocated", "heap_size"):
                grow = m[f"growth_{what}"]
                add(f"memory growth ({what}) with {m['target_keys']} keys < L1 bound + 10%",
                    f"{grow / 2**20:.1f} MiB", f"{limit / 2**20:.1f} MiB", grow < limit,
                    f"bound {m['l1_bound_bytes'] / 2**20:.1f} MiB" + ext)
        return t

    def worse_than_before(self):
        """Rows whose ratio to a baseline fell below 0.9 x the one in the results file this run
        replaces (ratios move by up to ~10 % between runs here); None without a previous file."""
        if not self.previous:
            return None
        before = {r["scenario"]: r.get("ratio") for r in self.previous.get("rows", [])}
        groups = {r["scenario"]: r["group"] for r in self.rows}
        # only ratios to a baseline (no filter, direct_response, redis-benchmark): a ratio between two
        # measured variants (memory vs Redis key store, detached vs inline) may fall because the
        # other one got faster
        to_baseline = lambda r: (groups.get(r.get("baseline")) == "1. baseline"
                                 or str(r.get("baseline")).startswith("redis_benchmark"))
        return [f"{r['scenario']} {r['ratio']} (was {before[r['scenario']]})" for r in self.rows
                if r.get("ratio") is not None and before.get(r["scenario"]) and to_baseline(r)
                and r["ratio"] < 0.9 * before[r["scenario"]]]

    def report(self):
        now = datetime.datetime.now().astimezone()
        result = {
            "date": now.isoformat(timespec="seconds"), "command": "make bench",
            "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                        "envoy": envoy_version(self.envoy_bin)},
            "settings": {"duration_s": self.d, "connections": self.conns, "wrk_threads": 2,
                         "keystore_protocol": "HTTP/1.1" if self.args.keystore_http1 else "HTTP/2 (h2c)",
                         "envoy_concurrency": 1, "smoke": self.args.smoke,
                         "keystore_wrk": f"{self.args.keystore_connections} threads x 1 connection"},
            "rows": self.rows, "targets": [] if self.args.smoke else self.targets(),
            "extra": self.extra, "notes": self.notes,
        }
        md = render_md(result)
        print()
        print(md)
        if not self.args.no_write and not self.args.smoke:
            out = BENCH / "results"
            out.mkdir(exist_ok=True)
            name = "latest"
            (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
            (out / f"{name}.md").write_text(md)
            log(f"wrote {out / (name + '.md')} and {name}.json")


# The scenarios of the latency-against-load sweep (and its plot).
SWEEP = ("no_filter_post", "first_exec_memory", "first_exec_memory_unbatched", "replay_l1")


def plot_sweep(points, path):
    """p50 (solid) and p99 (dashed) latency against offered load, one colour per scenario."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing (scripts/setup.sh installs it): no plot")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, name in enumerate(SWEEP):
        pts = [p for p in points if p["scenario"] == name]
        xs = [p["offered_rps"] for p in pts]
        colour = f"C{i}"
        ax.plot(xs, [p["p50_ms"] for p in pts], "-", color=colour, label=f"{name} p50")
        ax.plot(xs, [p["p99_ms"] for p in pts], "--", color=colour, label=f"{name} p99")
        # filled: the pace was kept; hollow: the scenario saturated below the offered load
        for p in pts:
            kept = p["achieved_rps"] >= 0.95 * p["offered_rps"]
            for y in (p["p50_ms"], p["p99_ms"]):
                ax.plot([p["offered_rps"]], [y], "o", color=colour, markerfacecolor=colour if kept else "white")
    ax.set_xlabel("offered load (req/s, paced)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Latency against offered load (Envoy --concurrency 1; hollow: pace not kept)")
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=100)
    log(f"wrote {path}")


def render_md(res):
    L = []
    L.append(f"# Benchmark results ({res['date']})\n")
    m = res["machine"]
    x = res["extra"]
    L.append(f"`{res['command']}` on {m['cores']} cores ({m['platform']}), {m['envoy']}; "
             f"Envoy --concurrency 1; wrk 2 threads, {res['settings']['connections']} connections, "
             f"{res['settings']['duration_s']} s per scenario after a warm-up (key store alone: wrk "
             f"{res['settings']['keystore_wrk']}); Envoy to the key store over {res['settings']['keystore_protocol']}. Load average before/after: "
             f"{x.get('load_average_before')} / {x.get('load_average_after')}; wall time {x.get('wall_s')} s.\n")
    L.append("CPU us/req: CPU time (user + system, /proc/<pid>/stat) of Envoy and of the key store that took "
             "part, over exactly the scenario's slices, per request.\n")
    L.append("| scenario | req/s | Envoy CPU us/req | key store CPU us/req | p50 ms | p99 ms | baseline | ratio | "
             "p99 added ms | note |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |")
    cell = lambda v: "" if v is None else f"{v:.0f}"
    for r in res["rows"]:
        L.append(f"| {r['scenario']} | {r['rps']:.0f} | {cell(r.get('envoy_cpu_us'))} | "
                 f"{cell(r.get('keystore_cpu_us'))} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                 f"{r.get('baseline') or ''} | {r.get('ratio', '') if r.get('ratio') is not None else ''} | "
                 f"{r.get('p99_added_ms', '') if r.get('baseline') and 'p99_added_ms' in r else ''} | "
                 f"{r['note']}{'; non-2xx ' + str(r['non_2xx']) if r['non_2xx'] and 'storm' not in r['scenario'] else ''} |")
    if res["targets"]:
        L.append("\n## Targets\n")
        L.append("| target | value | goal | met | detail |")
        L.append("| --- | ---: | ---: | --- | --- |")
        for t in res["targets"]:
            L.append(f"| {t['target']} | {t['value']} | {t['goal']} | {'met' if t['met'] else 'MISSED'} | {t['detail']} |")
    sweep = x.get("sweep")
    if sweep:
        L.append("\n## Latency against offered load (plot: latency-vs-load.png)\n")
        L.append("| offered req/s | " + " | ".join(f"{n} p50 / p99 ms" for n in SWEEP) + " |")
        L.append("| ---: |" + " ---: |" * len(SWEEP))
        for rate in sorted({p["offered_rps"] for p in sweep}):
            cells = []
            for n in SWEEP:
                p = next((p for p in sweep if p["scenario"] == n and p["offered_rps"] == rate), None)
                cells.append("" if p is None else f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f}"
                             + ("" if p["achieved_rps"] >= 0.95 * rate else f" ({p['achieved_rps']:.0f} achieved)"))
            L.append(f"| {rate} | " + " | ".join(cells) + " |")
    mem = x.get("memory")
    if mem:
        L.append("\n## Memory (Envoy admin /memory, filter with no key store, direct_response route)\n")
        L.append(f"- `.wasm` size: {mem['wasm_bytes']} bytes ({mem['wasm_bytes'] / 1024:.0f} KiB)")
        L.append(f"- before: allocated {mem['before']['allocated'] / 2**20:.1f} MiB, heap_size "
                 f"{mem['before']['heap_size'] / 2**20:.1f} MiB; after {mem['keys']} distinct keys: allocated "
                 f"{mem['after']['allocated'] / 2**20:.1f} MiB, heap_size {mem['after']['heap_size'] / 2**20:.1f} MiB")
        L.append(f"- stated L1 bound ({mem['l1_bound_formula']}): {mem['l1_bound_bytes'] / 2**20:.1f} MiB")
        L.append("\n| keys | req/s (chunk) | p99 ms | allocated MiB | heap_size MiB |")
        L.append("| ---: | ---: | ---: | ---: | ---: |")
        for p in mem["curve"]:
            L.append(f"| {p['keys']} | {p['rps']:.0f} | {p['p99_ms']:.2f} | {p['allocated'] / 2**20:.1f} | "
                     f"{p['heap_size'] / 2**20:.1f} |")
    if x.get("vm_memory"):
        L.extend(vm_memory.render(x["vm_memory"]))
    for k in ("vm_start", "vm_start_memory_envoy"):
        if k in x:
            v = x[k]
            L.append(f"\n- VM start ({k}): {v}")
    rb = x.get("redis_benchmark")
    if rb:
        L.append(f"- redis-benchmark mixed claim+complete (harmonic mean of the two EVAL rates): {rb['mixed_rps']} ops/s")
    for n in res["notes"]:
        L.append(f"- {n}")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- helpers


def vm_start(env, vms=1):
    """When the plugin's VMs were up: Envoy's start to /ready, and, from Envoy's log timestamps, the
    start ("initializing epoch 0") to each 'configured' line of the plugin (one per VM: the main
    thread's and the worker's, for each vm_id), plus the gaps between them."""
    def stamps():
        text = env.log_path.read_text(errors="replace")
        first, found = None, []
        for line in text.splitlines():
            m = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\]\[(\d+)\]", line)
            if not m:
                continue
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            first = first if first is not None else t
            if "configured:" in line and "near-cache slots" in line:
                found.append(round(t - first, 4))
        return found if len(found) >= 2 * vms else None
    try:
        found = wait_until("plugin log lines", stamps, timeout=3)
    except RuntimeError:
        found = []
    return {"ready_s": round(env.ready_s, 3), "configured_s_after_start": found,
            "vm_gaps_s": [round(b - a, 4) for a, b in zip(found, found[1:])]}


def envoy_version(binary):
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"version: \S+/(\d+\.\d+\.\d+)", out)
        return f"Envoy {m.group(1)}" if m else "Envoy"
    except OSError:
        return "Envoy"


def find_envoy():
    for cand in [os.environ.get("ENVOY_BIN"), ROOT / ".venv" / "bin" / "envoy", shutil.which("envoy"),
                 "/tmp/venvtest/bin/envoy"]:
        if cand and Path(cand).exists() and os.access(cand, os.X_OK):
            return str(cand)
    raise SystemExit("no Envoy: run `make setup` (or set ENVOY_BIN)")


def find_bins():
    d = Path(os.environ.get("BENCH_BIN_DIR", ROOT / "target" / "release"))
    bins = {"payments": d / "payments-demo", "keystore": d / "idempotency-keystore"}
    for k, v in bins.items():
        if not v.exists():
            raise SystemExit(f"{v} missing: `cargo build --release -p payments-demo -p idempotency-keystore`")
    return {k: str(v) for k, v in bins.items()}


def start_redis(tmp):
    """A private redis-server (no persistence) on a port Redis picks from a free one we probe."""
    import socket
    for _ in range(20):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        d = tmp / "redis"
        d.mkdir(exist_ok=True)
        proc = PROCS.add("redis", subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(d), "--protected-mode", "yes"],
            stdout=open(tmp / "redis.log", "wb"), stderr=subprocess.STDOUT))
        try:
            wait_until("redis", lambda: subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() == "PONG",
                timeout=10, proc=proc)
            return port
        except RuntimeError:
            PROCS.stop(proc)
    raise RuntimeError("could not start redis-server")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="one ~3 s scenario; exit 1 without numbers")
    ap.add_argument("--duration", type=int, default=6, help="seconds per scenario, over all rounds (default 6)")
    ap.add_argument("--sweep-points", type=int, default=5,
                    help="offered loads of the latency sweep, up to 0.8 of no_filter_post's rate (0: none)")
    ap.add_argument("--sweep-seconds", type=int, default=2, help="seconds per sweep point and scenario")
    ap.add_argument("--batch-max-entries", type=int, default=32,
                    help="keystore.batch_max_entries of the batched filter listeners (default 32, the filter's)")
    ap.add_argument("--batches-in-flight", type=int, default=2,
                    help="keystore.batches_in_flight of the batched filter listeners (default 2, the filter's)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds per listener (default 2)")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    ap.add_argument("--keystore-connections", type=int, default=16)
    ap.add_argument("--l1-keys", type=int, default=200, help="keys pre-recorded for replay from L1")
    ap.add_argument("--storm-group", type=int, default=32, help="requests per key in the storm")
    ap.add_argument("--memory-keys", type=int, default=1_000_000, help="distinct keys for the memory scenario")
    ap.add_argument("--memory-seconds", type=int, default=150, help="time cap of the memory scenario")
    ap.add_argument("--memory-chunk", type=int, default=15, help="seconds between /memory readings")
    ap.add_argument("--vm-burst", type=int, default=300,
                    help="concurrent detached POSTs of the VM memory measurement (default 300)")
    ap.add_argument("--vm-body-bytes", type=int, default=900_000, help="their body size (default 900000)")
    ap.add_argument("--vm-hold-ms", type=int, default=5000, help="how long payments-demo holds each (default 5000)")
    ap.add_argument("--rounds", type=int, default=6, help="round-robin slices per scenario (default 3)")
    ap.add_argument("--only", help="comma-separated Envoy scenarios (and their baselines) only; no L2/key store/memory; "
                    "`vm_memory` alone: only the VM memory burst")
    ap.add_argument("--profile", help="perf-record Envoy and the key store during an extra slice of this "
                    "scenario (one of --only's, or replay_l2)")
    ap.add_argument("--profile-seconds", type=int, default=5, help="length of the profiled slice (default 5)")
    ap.add_argument("--keystore-http1", action="store_true",
                    help="Envoy speaks HTTP/1.1 to the key store instead of HTTP/2 (h2c), to compare")
    ap.add_argument("--no-write", action="store_true", help="print only; write no results file")
    args = ap.parse_args()
    b = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        b.run()
        b.report()
    finally:
        PROCS.stop_all()
        if not os.environ.get("BENCH_KEEP_TMP") and hasattr(b, "tmp"):
            shutil.rmtree(b.tmp, ignore_errors=True)
        elif hasattr(b, "tmp"):
            log(f"logs kept in {b.tmp}")


if __name__ == "__main__":
    main()
