"""gRPC replays and first executions (bench/README.md, "gRPC replays"): what a routed replay costs next
to a local reply, and what the filter costs a gRPC call's first execution next to the same call through
Envoy without it, in the same run and the same Envoy.

One Envoy (bench/envoy/grpc.yaml.tmpl) runs two listeners with the filter over the same VM id, so they
share L1 and the record: `grpc_routed` (`routed_replay`: a gRPC retry goes to the internal replay
listener, whose filter answers with the stored message and trailers) and `grpc_local` (a local reply,
which Envoy sends a gRPC caller trailers-only: the wrong answer, and the cheapest path there is). The
`grpcio` service of the end-to-end tests (tests/grpc/server.py) answers the one first call; every
measured request is a retry of that call's key, by h2load over h2c, rounds interleaved. The check: the
service's cluster sees no request during the replays, and every routed request is counted as
`replayed`. First executions: listeners `grpc_first` (the filter, `routed_replay` on) and `grpc_plain`
(no filter) both give each call a key of its own (the request id, by a header rewrite before the
filter), so every call through `grpc_first` executes once, counted `executed`. Standard library only (plus h2load and the .venv's grpcio service).
"""

import re
import select
import subprocess
import threading
import time

METHOD = "/test.Echo/Call"
# One length-prefixed message (uncompressed, 9 bytes).
MESSAGE = b"\x00\x00\x00\x00\x09bench-pay"
KEY = '"grpc-bench-1"'
STREAMS = 8


def start_service(root, procs, tmp):
    """The grpcio service on a free port; returns (proc, port)."""
    python = root / ".venv" / "bin" / "python"
    proc = procs.add("grpc-service", subprocess.Popen(
        [str(python), str(root / "tests" / "grpc" / "server.py")], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=open(tmp / "grpc-service.log", "wb"), cwd=root))
    deadline = time.monotonic() + 30
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line += proc.stdout.readline()
            m = re.search(rb"PORT (\d+)", line)
            if m:
                # The service prints a line per call: drain them, or its pipe fills and it stalls.
                threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
                return proc, int(m.group(1))
        if proc.poll() is not None:
            break
    raise RuntimeError(f"the gRPC service did not start (see {tmp / 'grpc-service.log'})")


def h2load(url, body_file, log_file, seconds=None, requests=None, conns=8):
    """One h2load run of gRPC calls with the bench key; a row's numbers (as run.py's wrk())."""
    cmd = ["h2load", "-c", str(conns), "-m", str(STREAMS), "-t", "1", "-d", str(body_file),
           "--log-file", str(log_file),
           "-H", "content-type: application/grpc", "-H", "te: trailers",
           "-H", f"idempotency-key: {KEY}", "-H", "authorization: Bearer bench-caller"]
    cmd += ["-D", str(seconds)] if seconds else ["-n", str(requests)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=(seconds or 10) + 60).stdout
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    elapsed = re.search(r"finished in ([\d.]+)(m?s)", out)
    if not (done and codes and elapsed):
        raise RuntimeError(f"h2load output not understood:\n{out}")
    secs = float(elapsed.group(1)) / (1000 if elapsed.group(2) == "ms" else 1)
    durations = sorted(int(line.split("\t")[2]) for line in log_file.read_text().splitlines()
                       if line.count("\t") >= 2)

    def pct(p):
        return durations[min(len(durations) - 1, int(len(durations) * p))] if durations else 0

    n = int(done.group(2))
    return {
        "requests": n, "duration_us": secs * 1e6, "rps": n / secs if secs else 0.0,
        "latency_us": {"p50": pct(0.50), "p99": pct(0.99)},
        "errors": {"status": n - int(codes.group(1)), "failed": int(done.group(4)),
                   "errored": int(done.group(5))},
        "conns": conns, "duration_s": seconds or secs,
    }


def merge(rs):
    """Slices of one scenario as one run: totals, and the slices' worst percentiles."""
    n = sum(r["requests"] for r in rs)
    us = sum(r["duration_us"] for r in rs)
    return {
        "requests": n, "duration_us": us, "rps": n / (us / 1e6) if us else 0.0,
        "latency_us": {p: max(r["latency_us"][p] for r in rs) for p in ("p50", "p99")},
        "errors": {k: sum(r["errors"][k] for r in rs) for k in rs[0]["errors"]},
        "conns": rs[0]["conns"], "duration_s": sum(r["duration_s"] for r in rs),
        "cpu_s": {k: sum(r["cpu_s"][k] for r in rs) for k in rs[0]["cpu_s"]},
    }


def measure(bench, envoy_class, procs, log, rounds, per_round):
    """Runs the two scenarios round-robin and adds their rows to `bench` (run.py's Bench)."""
    tmp = bench.tmp
    proc, port = start_service(bench.values["root"], procs, tmp)
    values = dict(bench.values, grpc_port=port)
    env = envoy_class(bench.envoy_bin, "envoy-grpc", "grpc.yaml.tmpl", values, tmp)
    body = tmp / "grpc-message.bin"
    body.write_bytes(MESSAGE)
    first = h2load(env.url("grpc_routed", METHOD), body, tmp / "grpc-first.log", requests=1, conns=1)
    if first["requests"] != 1 or env.stats().get("executed", 0) != 1:
        raise RuntimeError(f"gRPC first call not recorded: {first}, stats {env.stats()}")
    # replays of the routed slices only (a local reply counts as `replayed` too); requests the
    # service got during the replay slices; first executions the filter counted
    replayed, upstream, executed = 0, 0, 0
    listener = {"grpc_replay_local": "grpc_local", "grpc_replay_routed": "grpc_routed",
                "grpc_first_plain": "grpc_plain", "grpc_first_execution": "grpc_first"}
    slices = {name: [] for name in listener}
    log(f"gRPC replays and first executions: {rounds} rounds x {per_round} s per scenario, "
        f"h2load -c 8 -m {STREAMS}")
    for rnd in range(rounds):
        for name, out in slices.items():
            stats0, cpu0 = env.stats(), bench.cpu(env)
            upstream0 = env.counter("cluster.grpc_service.upstream_rq_total")
            r = h2load(env.url(listener[name], METHOD), body, tmp / f"{name}-{rnd}.log", seconds=per_round)
            cpu1, stats1 = bench.cpu(env), env.stats()
            if name == "grpc_replay_routed":
                replayed += stats1.get("replayed", 0) - stats0.get("replayed", 0)
            if name.startswith("grpc_replay"):
                upstream += env.counter("cluster.grpc_service.upstream_rq_total") - upstream0
            if name == "grpc_first_execution":
                executed += stats1.get("executed", 0) - stats0.get("executed", 0)
            r["cpu_s"] = {k: cpu1[k] - cpu0[k] for k in cpu0}
            out.append(r)
    local, routed = merge(slices["grpc_replay_local"]), merge(slices["grpc_replay_routed"])
    bench.row("grpc_replay_local", "4. replay", local,
              note="gRPC retry answered by a local reply (trailers-only: the client gets UNKNOWN, no message; "
                   "the cheapest path, and the wrong answer); same Envoy and record as grpc_replay_routed")
    bench.row("grpc_replay_routed", "4. replay", routed, baseline="grpc_replay_local",
              note=(f"gRPC retry routed to the internal replay listener: the stored message and trailers "
                    f"(README, \"Routed replays\"); {replayed} of {routed['requests']} counted replayed, "
                    f"requests to the service during the runs: {upstream}"),
              replayed=replayed, upstream_requests=upstream)
    plain, first = merge(slices["grpc_first_plain"]), merge(slices["grpc_first_execution"])
    bench.row("grpc_first_plain", "3. first execution", plain,
              note="gRPC call through Envoy without the filter (the grpcio service of the tests), "
                   "a fresh idempotency-key per call by a header rewrite, as grpc_first_execution")
    bench.row("grpc_first_execution", "3. first execution", first, baseline="grpc_first_plain",
              note=(f"gRPC call's first execution through the filter (no key store: L1; routed_replay on), "
                    f"a fresh key per call; {executed} of {first['requests']} counted executed"),
              executed=executed)
    env.stop()
    procs.stop(proc)
