"""The chaos run's nemesis (standard library only): one fault at a time, at random, through the docker CLI.

Faults (each one healed before the next; a quiet interval of QUIET_S between them):
  pause              `docker pause` of any container (gateway, key store replica, Redis, payments) for PAUSE_S
                     (0.5 to 8 s): a frozen process.
  kill               `docker kill` (SIGKILL) of a gateway, a key store replica or Redis, `docker start` KILL_S
                     (0.5 to 3 s) later (payments is never killed: its list of payments is the record of
                     executions).
  cut-gateway-store  a gateway leaves the `keys` network (`docker network disconnect`) for CUT_S (1 to 8 s):
                     it cannot reach either key store replica.
  cut-store-redis    a key store replica leaves the `data` network for CUT_S: it cannot reach Redis.
  latency            `tc qdisc ... netem delay` on every interface of a container, from the host inside the
                     container's network namespace (nsenter), for 2 to 8 s. Probed first: where the kernel has
                     no netem qdisc, this kind is not injected and the run says why.

The envelope (tests/chaos/run.py checks it against the gateway's `lock_lease_ms` before it starts): no
pause or cut outlasts a claim's lease. A frozen gateway renews its claims on its first tick once it
resumes, at most a renewal period (a third of the lease) plus the pause after its last renewal. While the
key store is out of reach (its gateway cut off, Redis paused, a replica cut off from Redis), a record
waits in the gateway, which retries it (after 200 ms, doubling, at most 5 s apart) past the lease: it lands
at most the upstream's work (the workload asks for 3 s at most), the outage, a DNS refresh (1 s) and one
retry delay after the claim, and a claim whose lease ran out meanwhile is abandoned, not taken over, so its
record still lands. Exactly once must hold through every pause and cut. A killed gateway (SIGKILL, often
while requests of the inline and the detached exactly-once routes are at the upstream) is gone: its leases
run out, and the key store reports each such claim abandoned, so the other gateway answers 409 and then
410 (outcome unknown) and never runs the key again; the checker counts a second execution as a violation.

Every fault is one JSON line of the nemesis log: kind, target, start (before the command), applied (the
command done: the fault is in effect), seconds (from applied to the heal's first command: how long the fault
surely held), end (the heal done; for a kill, the restarted service ready), detail, and an error if a
command failed. Before each fault the nemesis looks at every container: one that is not running and was
not stopped by it has crashed; that is logged (kind `unexpected-exit`, with its exit code) and the
container is started again so the run goes on.

Seeded: kinds, targets, durations and intervals come from one random generator seeded from the run's seed.
"""

import json
import random
import subprocess
import threading
import time

PAUSE_TARGETS = ("envoy-a", "envoy-b", "keystore-1", "keystore-2", "redis", "payments")
KILL_TARGETS = ("envoy-a", "envoy-b", "keystore-1", "keystore-2", "redis")
GATEWAYS = ("envoy-a", "envoy-b")
STORES = ("keystore-1", "keystore-2")
QUIET_S = (1.0, 4.0)
PAUSE_S = (0.5, 8.0)
KILL_S = (0.5, 3.0)
CUT_S = (1.0, 8.0)
LATENCY_S = (2.0, 8.0)
KINDS = ("pause", "kill", "cut-gateway-store", "cut-store-redis", "latency")
LATENCY = ["delay", "150ms", "100ms"]


class Docker:
    def __init__(self, command=("docker",)):
        self.command = list(command)

    def run(self, *args, check=True, timeout=60):
        proc = subprocess.run(self.command + list(args), text=True, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def state(self, cid):
        out = self.run("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{.State.StartedAt}}", cid).stdout
        status, code, started = out.split()
        return status, int(code), started

    def health(self, cid):
        return self.run("inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
                        cid).stdout.strip()

    def pid(self, cid):
        return int(self.run("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip())


def netem_probe(docker, cid):
    """None when netem works inside the container's network namespace, else the reason it does not."""
    try:
        pid = docker.pid(cid)
        ns = ["nsenter", "-t", str(pid), "-n"]
        add = subprocess.run(ns + ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                             text=True, capture_output=True, timeout=10)
        if add.returncode != 0:
            return f"tc netem: {add.stderr.strip() or add.stdout.strip()} (the kernel has no netem qdisc)"
        subprocess.run(ns + ["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True, timeout=10)
        return None
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return f"tc netem: {e}"


class Nemesis(threading.Thread):
    """Injects faults until `stop` is set, then heals what it broke."""

    def __init__(self, seed, docker, containers, networks, log_path, stop, kinds=KINDS, skipped=None):
        super().__init__(name="nemesis", daemon=True)
        self.rng = random.Random(f"{seed}/nemesis")
        self.docker, self.containers, self.networks = docker, containers, networks
        self.stop, self.kinds = stop, [k for k in kinds if k not in (skipped or {})]
        self.log = open(log_path, "a", encoding="utf-8")
        self.broken = set()  # services this nemesis stopped, paused or cut, not yet healed
        self.failure = None

    def write(self, event):
        self.log.write(json.dumps(event, sort_keys=True) + "\n")
        self.log.flush()

    def run(self):
        try:
            while not self.stop.wait(self.rng.uniform(*QUIET_S)):
                self.look_for_crashes()
                kind = self.rng.choice(self.kinds)
                self.inject(kind)
        except Exception as e:  # noqa: BLE001 - the run reports it and fails
            self.failure = f"{type(e).__name__}: {e}"
            raise
        finally:
            self.heal_all()
            self.look_for_crashes()
            self.log.close()

    def look_for_crashes(self):
        for service, cid in sorted(self.containers.items()):
            if service in self.broken:
                continue
            status, code, started = self.docker.state(cid)
            if status not in ("running", "paused"):
                self.write({"kind": "unexpected-exit", "target": service, "start": time.time(), "end": time.time(),
                            "detail": f"status {status}, exit code {code}, started {started}"})
                self.docker.run("start", cid, check=False)

    def inject(self, kind):
        rng = self.rng
        if kind == "pause":
            target, duration = rng.choice(PAUSE_TARGETS), rng.uniform(*PAUSE_S)
            do, undo = ("pause",), ("unpause",)
            detail = f"paused {duration:.1f} s"
        elif kind == "kill":
            target, duration = rng.choice(KILL_TARGETS), rng.uniform(*KILL_S)
            do, undo = ("kill",), ("start",)
            detail = f"SIGKILL, started again after {duration:.1f} s"
        elif kind == "cut-gateway-store":
            target, duration = rng.choice(GATEWAYS), rng.uniform(*CUT_S)
            net = self.networks["keys"]
            do, undo = ("network", "disconnect", net), ("network", "connect", net)
            detail = f"off network keys {duration:.1f} s"
        elif kind == "cut-store-redis":
            target, duration = rng.choice(STORES), rng.uniform(*CUT_S)
            net = self.networks["data"]
            do, undo = ("network", "disconnect", net), ("network", "connect", net)
            detail = f"off network data {duration:.1f} s"
        elif kind == "latency":
            target, duration = rng.choice(PAUSE_TARGETS), rng.uniform(*LATENCY_S)
            do = undo = None
            detail = f"netem {' '.join(LATENCY)} {duration:.1f} s"
        else:
            raise ValueError(kind)
        cid = self.containers[target]
        event = {"kind": kind, "target": target, "start": time.time(), "detail": detail}
        self.broken.add(target)
        try:
            if kind == "latency":
                self.netem(cid, add=True)
            else:
                self.docker.run(*do, cid)
            event["applied"] = time.time()
            self.stop.wait(duration)
        except RuntimeError as e:
            event["error"] = str(e)
        finally:
            if "applied" in event:
                event["seconds"] = round(time.time() - event["applied"], 3)
            try:
                if kind == "latency":
                    self.netem(cid, add=False)
                else:
                    self.docker.run(*undo, cid)
                if kind == "kill":
                    self.wait_ready(target, cid)
            except RuntimeError as e:
                event["error"] = (event.get("error", "") + f"; heal: {e}").lstrip("; ")
            self.broken.discard(target)
            event["end"] = time.time()
            self.write(event)

    def wait_ready(self, service, cid, timeout=60):
        """After a restart: until the container's health check passes (gateways, Redis), or 1 s."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            health = self.docker.health(cid)
            if health in ("healthy", "none"):
                if health == "none":
                    time.sleep(1.0)
                return
            time.sleep(0.2)
        raise RuntimeError(f"{service} not healthy {timeout} s after its restart")

    def netem(self, cid, add):
        pid = self.docker.pid(cid)
        ns = ["nsenter", "-t", str(pid), "-n"]
        links = subprocess.run(ns + ["ip", "-o", "link", "show"], text=True, capture_output=True, timeout=10)
        devs = [line.split(":")[1].strip().split("@")[0] for line in links.stdout.splitlines()]
        for dev in devs:
            if dev == "lo":
                continue
            cmd = ["tc", "qdisc", "add", "dev", dev, "root", "netem"] + LATENCY if add else \
                ["tc", "qdisc", "del", "dev", dev, "root"]
            proc = subprocess.run(ns + cmd, text=True, capture_output=True, timeout=10)
            if proc.returncode != 0 and add:
                raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")

    def heal_all(self):
        """Whatever is still broken (a fault cut short by an error) is undone: unpaused, started, reconnected."""
        for service, cid in sorted(self.containers.items()):
            status, _, _ = self.docker.state(cid)
            if status == "paused":
                self.docker.run("unpause", cid, check=False)
        for service in GATEWAYS:
            self.docker.run("network", "connect", self.networks["keys"], self.containers[service], check=False)
        for service in STORES:
            self.docker.run("network", "connect", self.networks["data"], self.containers[service], check=False)
        for service in list(self.broken):
            self.docker.run("start", self.containers[service], check=False)
            self.broken.discard(service)
