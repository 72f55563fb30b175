"""VM memory per in-flight detached request (bench/README.md, "VM memory"): a fixed burst of large
detached POSTs, each its own key, held by payments-demo, and what the filter's Wasm VM and the whole
Envoy process grew by while they were all in flight.

Envoy 1.40 has no stat for a Wasm VM's memory (`/stats?filter=wasm` lists VM counts and reloads only),
so the VM's linear memory is read from `/proc/<pid>/maps`: V8 reserves 8 GiB of address space for each
32-bit Wasm memory and makes its first `memory.size` bytes readable and writable, so each VM shows as an
`rw-p` anonymous mapping directly followed by a `---p` one, the two exactly 8 GiB together; the `rw-p`
part's size is that VM's linear memory (which never shrinks: its high-water mark). Standard library only.
"""

import re
import threading
import time
from pathlib import Path

V8_WASM_RESERVATION = 8 << 30


def vm_linear_memory(pid):
    """(bytes, VMs): the summed linear memory of every Wasm VM in process `pid` (each vm_id has a VM
    per worker plus the main thread's), or (None, 0) if no such mapping is found."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None, 0
    maps = []
    for line in text.splitlines():
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ (\S+)\s*(.*)$", line)
        if m:
            maps.append((int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(4), m.group(5)))
    total, vms = 0, 0
    for (s, e, perms, inode, name), (s2, e2, perms2, _, _) in zip(maps, maps[1:]):
        if (perms == "rw-p" and inode == "0" and not name and perms2 == "---p" and e == s2
                and e2 - s == V8_WASM_RESERVATION):
            total += e - s
            vms += 1
    return (total if vms else None), vms


def rss(pid):
    """Resident set size of process `pid` in bytes (VmRSS), or 0."""
    try:
        m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return 0
    return int(m.group(1)) * 1024 if m else 0


def burst(http, url, posts, pid, n, body_bytes, delay_ms, prefix):
    """Sends `n` concurrent detached POSTs of `body_bytes` each (its own key each) to `url`, which
    payments-demo holds `delay_ms`; `posts()` is payments-demo's count of POSTs received. Samples
    Envoy's RSS, the VMs' linear memory and the requests in flight (received upstream, not yet
    answered) every 20 ms. Returns the figures as a dict."""
    body = b'{"amount":1,"pad":"' + b"x" * body_bytes + b'"}'
    statuses, answered = [], [0]
    lock = threading.Lock()
    gate = threading.Barrier(n + 1)

    def client(i):
        gate.wait()
        try:
            status, _, _ = http("POST", url, body, {
                "content-type": "application/json", "authorization": "Bearer bench-vm-memory",
                "idempotency-key": f'"{prefix}-{i}"', "x-demo-delay-ms": str(delay_ms)}, timeout=120)
        except OSError as e:  # no answer: counted by its error's name
            status = type(e).__name__
        with lock:
            statuses.append(status)
            answered[0] += 1

    vm0, vms = vm_linear_memory(pid)
    rss0 = rss(pid)
    posts0 = posts()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    gate.wait()
    peak_rss, peak_in_flight, rss_at_peak = rss0, 0, rss0
    while any(t.is_alive() for t in threads):
        in_flight = posts() - posts0 - answered[0]
        now = rss(pid)
        peak_rss = max(peak_rss, now)
        if in_flight > peak_in_flight:
            peak_in_flight, rss_at_peak = in_flight, now
        time.sleep(0.02)
    for t in threads:
        t.join()
    vm1, _ = vm_linear_memory(pid)
    ok = sum(1 for s in statuses if s == 201)
    out = {
        "requests": n, "body_bytes": body_bytes, "upstream_hold_ms": delay_ms,
        "wall_s": round(time.monotonic() - t0, 2), "answered_201": ok,
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses), key=str)},
        "upstream_posts": posts() - posts0, "peak_in_flight": peak_in_flight, "vms": vms,
        "vm_before_bytes": vm0, "vm_after_bytes": vm1,
        "rss_before_bytes": rss0, "rss_peak_bytes": peak_rss, "rss_at_peak_in_flight_bytes": rss_at_peak,
    }
    per = max(1, peak_in_flight)
    if vm0 is not None and vm1 is not None:
        out["vm_growth_bytes"] = vm1 - vm0
        out["vm_bytes_per_in_flight"] = round((vm1 - vm0) / per)
    out["rss_growth_bytes"] = peak_rss - rss0
    out["rss_bytes_per_in_flight"] = round((peak_rss - rss0) / per)
    return out


def render(v):
    """Markdown lines for bench/results/latest.md."""
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:.1f} MiB"
    kib = lambda b: "n/a" if b is None else f"{b / 1024:.0f} KiB"
    return [
        "\n## VM memory per in-flight detached request (bench/vm_memory.py)\n",
        f"- burst: {v['requests']} concurrent detached POSTs of {v['body_bytes'] / 1000:.0f} KB, each its own key, "
        f"payments-demo holding each {v['upstream_hold_ms']} ms; default `memory_budget_bytes` (512 MiB); "
        f"answers {v['statuses']} in {v['wall_s']} s; peak in flight (at the upstream, unanswered): "
        f"{v['peak_in_flight']}",
        f"- the VMs' linear memory ({v['vms']} VMs, /proc/<pid>/maps): {mib(v['vm_before_bytes'])} before, "
        f"{mib(v['vm_after_bytes'])} after (high-water): **{kib(v.get('vm_bytes_per_in_flight'))} per in-flight "
        f"request** ({mib(v.get('vm_growth_bytes'))} / {v['peak_in_flight']})",
        f"- Envoy's RSS: {mib(v['rss_before_bytes'])} before, {mib(v['rss_peak_bytes'])} at its peak: "
        f"**{kib(v['rss_bytes_per_in_flight'])} per in-flight request** (Envoy's own buffers and the callouts' "
        f"copies of the bodies as well as the VM)",
    ]
