#!/usr/bin/env python3
"""Every filter configuration shipped in envoy/, deploy/compose/, deploy/istio/ and deploy/envoy-gateway/,
as JSON.

Prints a JSON array; one entry per Wasm filter configuration found:
  {"source": "<file>#<document>",
   "kind": "<Envoy bootstrap|WasmPlugin|TrafficExtension|EnvoyFilter|EnvoyExtensionPolicy>",
   "allow_on_headers_stop_iteration": bool, "config": "<the filter's JSON configuration>"}
Used by tests/deploy_artifacts.rs (which parses each with the filter's own Config::parse) and by
tests/deploy/test_deploy.py (which loads each into Envoy with the built module).
"""

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
SOURCES = ["envoy/*.yaml", "deploy/compose/*.yaml", "deploy/istio/*.yaml", "deploy/envoy-gateway/*.yaml"]


def wasm_typed_configs(node):
    """Every Wasm HTTP filter typed_config below node (Envoy bootstraps and EnvoyFilter patches)."""
    if isinstance(node, dict):
        if node.get("@type") == WASM_TYPE:
            yield node
        for v in node.values():
            yield from wasm_typed_configs(v)
    elif isinstance(node, list):
        for v in node:
            yield from wasm_typed_configs(v)


def envoy_entry(typed_config):
    config = typed_config.get("config", {})
    configuration = config.get("configuration", {})
    return {
        "allow_on_headers_stop_iteration": bool(config.get("allow_on_headers_stop_iteration", False)),
        "config": configuration.get("value", ""),
    }


def collect(root=ROOT):
    out = []
    for pattern in SOURCES:
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix()
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
            for i, doc in enumerate(docs):
                source = f"{rel}#{i}"
                kind = doc.get("kind", "Envoy bootstrap") if isinstance(doc, dict) else None
                if kind == "WasmPlugin":
                    out.append({"source": source, "kind": kind, "allow_on_headers_stop_iteration": False,
                                "config": json.dumps(doc["spec"].get("pluginConfig", {}))})
                elif kind == "TrafficExtension" and "wasm" in doc["spec"]:
                    out.append({"source": source, "kind": kind, "allow_on_headers_stop_iteration": False,
                                "config": json.dumps(doc["spec"]["wasm"].get("pluginConfig", {}))})
                elif kind == "EnvoyExtensionPolicy":
                    # Envoy Gateway cannot set allow_on_headers_stop_iteration either.
                    for wasm in doc["spec"].get("wasm", []):
                        out.append({"source": source, "kind": kind, "allow_on_headers_stop_iteration": False,
                                    "config": json.dumps(wasm.get("config", {}))})
                elif kind in ("EnvoyFilter", "Envoy bootstrap"):
                    for tc in wasm_typed_configs(doc):
                        out.append({"source": source, "kind": kind, **envoy_entry(tc)})
    return out


if __name__ == "__main__":
    json.dump(collect(), sys.stdout, indent=1)
    sys.stdout.write("\n")
