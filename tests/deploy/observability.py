"""The observability artifacts of deploy/observability/, read the same way by the offline checks
(tests/deploy/test_deploy.py, with promtool) and by the compose test (tests/compose/story.py, against the
live Prometheus). Standard library only: the compose story runs with the system Python.

- the Grafana dashboard's queries, with Grafana's variables replaced by fixed values so that Prometheus
  (or promtool) can evaluate them;
- the metric names a PromQL expression uses, and the names the code defines (the filter's counters as
  Envoy exports them, the key store's metrics).
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "deploy/observability"
DASHBOARD = OBS / "grafana-dashboard.json"

# Grafana's interval variables, as the test evaluates them: a rate window of 1 minute holds several samples
# at the demo's 5 s scrape interval; the range is the dashboard's default time range.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}

# Names that are PromQL, not metrics: functions, aggregations, keywords.
_PROMQL_WORDS = {
    "sum", "rate", "increase", "irate", "histogram_quantile", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "avg", "max", "min", "count", "topk", "bottomk", "vector", "le",
    "offset", "bool", "clamp_min", "clamp_max", "abs", "absent", "delta", "deriv", "label_replace",
}


def substitute(expr):
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def dashboard():
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dash=None):
    """[(panel title, refId, expression with Grafana's variables substituted)] for every panel target."""
    dash = dash or dashboard()
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t.get("refId", "?"), substitute(t["expr"])))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    return out


def metric_names(expr):
    """The metric names an expression selects (identifiers outside label matchers and strings that are
    followed by a selector, a range or the end of a term), ignoring PromQL's own words."""
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    no_matchers = re.sub(r"\{[^}]*\}", "{}", no_strings)
    no_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", r"\1()", no_matchers)
    no_ranges = re.sub(r"\[[^\]]*\]", "[]", no_groupings)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\(?)", no_ranges):
        word, call = m.group(1), m.group(2)
        if call or word in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def filter_metric_names():
    """The filter's counters as Envoy 1.40 exports them at /stats/prometheus: `idempotency.<kind>` (a
    Wasm-defined metric, Envoy's stat namespace `wasmcustom`) becomes `idempotency_<kind>`, without Envoy's
    `envoy_` prefix and without a `_total` suffix."""
    text = (ROOT / "core/src/metrics.rs").read_text()
    return {name.replace(".", "_") for name in re.findall(r'=> "(idempotency\.[a-z_]+)"', text)}


def observe_metric_names():
    """The observe-mode twin of every filter counter (`idempotency.observe.<kind>`, defined with the
    others when the plugin starts), as Prometheus sees it."""
    return {name.replace("idempotency_", "idempotency_observe_", 1) for name in filter_metric_names()}


def keystore_metric_names():
    """The key store's metric families (keystore/src/metrics.rs), with the series a histogram exports."""
    text = (ROOT / "keystore/src/metrics.rs").read_text()
    names = set()
    for family in re.findall(r'"(keystore_[a-z_]+)"', text):
        names.add(family)
        if family.endswith("_seconds"):
            names.update({f"{family}_bucket", f"{family}_sum", f"{family}_count"})
    return names
