"""Offline checks of every deployment artifact (run by `make validate`, part of `make test`).

- Envoy configs (envoy/, deploy/compose/, tests/chaos/gateway.yaml, the EnvoyFilter patch, every Istio
  pluginConfig): `envoy --mode validate` with the built module, so Envoy checks the protos and the filter
  itself parses its config.
- Kubernetes manifests: kubernetes-validate (strict, Kubernetes 1.30 schemas) for built-in kinds;
  the Istio kinds against istio_schemas.py, the Gateway API and Envoy Gateway kinds against
  gateway_schemas.py; plus the cross-references between them. The key-store clusters that the waypoint's
  EnvoyFilter and Envoy Gateway's EnvoyPatchPolicy add are loaded by Envoy.
- The OCI image layout of `make oci`: index -> manifest -> config/layer, media types, digests, sizes, and
  the layer's plugin.wasm byte-identical to the built module (read here and by umoci).
- docker-compose.yaml: `docker-compose config`, services, loopback-only ports, health checks, build
  contexts, Dockerfile COPY sources, base images as build arguments defaulting to the public images, and
  the Prometheus scrape targets. (`make compose-test` builds and runs the stack itself.)
- deploy/observability/: promtool accepts the alert rules (plain file and PrometheusRule, which must be
  equal), the Prometheus configuration and every Grafana dashboard query; every metric they name is one
  the filter or the key store defines.
Environment: ENVOY_BIN (default .venv/bin/envoy), DOCKER_COMPOSE (default docker-compose on PATH),
PROMTOOL (default .venv/bin/promtool, then PATH).
"""

import concurrent.futures
import copy
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import unittest
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

import observability
import plugin_configs
from gateway_schemas import SCHEMAS as GATEWAY_SCHEMAS
from istio_schemas import SCHEMAS as ISTIO_SCHEMAS

ROOT = Path(__file__).resolve().parents[2]
WASM = ROOT / "target/wasm32-wasip1/release/idempotency_filter.wasm"
OCI = ROOT / "target/oci"
K8S_VERSION = "1.30.0"
ISTIO_GROUPS = ("networking.istio.io", "extensions.istio.io", "security.istio.io", "telemetry.istio.io")
# Kinds outside Kubernetes itself, each checked against a schema of this repository.
CRD_GROUPS = ISTIO_GROUPS + ("gateway.networking.k8s.io", "gateway.envoyproxy.io")
SCHEMAS = {**ISTIO_SCHEMAS, **GATEWAY_SCHEMAS}
MANIFEST_DIRS = ("deploy/kubernetes", "deploy/istio", "deploy/envoy-gateway")
KEYSTORE_FQDN = "idempotency-keystore.idempotency.svc.cluster.local"
ISTIO_KEYSTORE_CLUSTER = f"outbound|8081||{KEYSTORE_FQDN}"
# The key-store cluster that waypoint-keystore-cluster.yaml adds to the waypoint.
WAYPOINT_KEYSTORE_CLUSTER = "idempotency-keystore"
WASM_TYPE = plugin_configs.WASM_TYPE
# What a deployment's environment gives the Wasm VM: stand-ins, as Envoy must load the configs that
# name these variables ({"env": ...}) without the real secrets.
STAND_IN_ENV = {
    "IDEMPOTENCY_HMAC_SECRET": "stand-in-secret-for-validation-0123456789abcdef",
    "IDEMPOTENCY_KEYSTORE_TOKEN": "stand-in-keystore-token-for-validation",
}


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifests(subdir):
    for path in sorted((ROOT / subdir).glob("*.yaml")):
        for doc in load_docs(path):
            yield path.relative_to(ROOT).as_posix(), doc


def all_manifests():
    for subdir in MANIFEST_DIRS:
        yield from manifests(subdir)


def added_clusters():
    """(file, cluster) for every Envoy cluster a manifest adds to a proxy: EnvoyFilter CLUSTER patches
    (ADD) and EnvoyPatchPolicy JSON patches that add a whole Cluster."""
    for rel, doc in all_manifests():
        if doc["kind"] == "EnvoyFilter":
            for patch in doc["spec"]["configPatches"]:
                if patch["applyTo"] == "CLUSTER" and patch["patch"]["operation"] == "ADD":
                    yield rel, doc, patch["patch"]["value"]
        elif doc["kind"] == "EnvoyPatchPolicy":
            for patch in doc["spec"]["jsonPatches"]:
                op = patch["operation"]
                if patch["type"].endswith(".Cluster") and op["op"] == "add" and not op.get("path"):
                    yield rel, doc, op["value"]


def assert_reaches_keystore(test, cluster):
    """An added key-store cluster: the key store Service, no retries, a connect timeout below the
    callout timeout (300 ms in every shipped configuration)."""
    (locality,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = locality["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    test.assertEqual((address["address"], address["port_value"]), (KEYSTORE_FQDN, 8081))
    test.assertEqual([t["max_retries"] for t in cluster["circuit_breakers"]["thresholds"]], [0],
                     "callouts never retry")
    test.assertLess(float(cluster["connect_timeout"].rstrip("s")), 0.3, "below the callout timeout")


def envoy_bin():
    env = os.environ.get("ENVOY_BIN")
    if env:
        return env
    venv = ROOT / ".venv/bin/envoy"
    if venv.exists():
        return str(venv)
    found = shutil.which("envoy")
    if not found:
        raise AssertionError("envoy not found: run `make setup` or set ENVOY_BIN")
    return found


def envoy_validate(config_path):
    """(ok, output) of `envoy --mode validate -c config_path`, run from the repository root."""
    proc = subprocess.run(
        [envoy_bin(), "--mode", "validate", "-c", str(config_path), "-l", "warning"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, **STAND_IN_ENV},
    )
    return proc.returncode == 0, proc.stdout + proc.stderr


def compose_cmd():
    env = os.environ.get("DOCKER_COMPOSE")
    if env:
        return shlex.split(env)
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise AssertionError("docker-compose not found: run `make setup` or set DOCKER_COMPOSE")


def promtool():
    env = os.environ.get("PROMTOOL")
    if env:
        return env
    venv = ROOT / ".venv/bin/promtool"
    if venv.exists():
        return str(venv)
    found = shutil.which("promtool")
    if not found:
        raise AssertionError("promtool not found: run `make setup` or set PROMTOOL")
    return found


def run_promtool(*args):
    proc = subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=60)
    return proc.returncode == 0, proc.stdout + proc.stderr


def dockerfile_instructions(path):
    """(instruction, arguments) per Dockerfile line, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", Path(path).read_text())
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            yield word.upper(), rest.strip()


def dockerfile_copies(path):
    """{path in the image: path in the build context} for every COPY from the context."""
    out = {}
    for word, rest in dockerfile_instructions(path):
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, dest = rest.split()
        for src in sources:
            out[dest + Path(src).name if dest.endswith("/") else dest] = src
    return out


def wasm_filter(configuration_json, allow_stop):
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": WASM_TYPE,
            "config": {
                "name": "idempotency",
                "root_id": "idempotency",
                "failure_policy": "FAIL_RELOAD",
                "allow_on_headers_stop_iteration": allow_stop,
                "vm_config": {
                    "vm_id": "idempotency",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(WASM)}},
                    # As Istio fills it from vmConfig.env (valueFrom HOST).
                    "environment_variables": {"host_env_keys": sorted(STAND_IN_ENV)},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration_json,
                },
            },
        },
    }


def listener(name, port, http_filter):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"name": "r", "virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                }]},
                "http_filters": [http_filter, {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    }


def static_cluster(name, port):
    return {
        "name": name, "type": "STATIC", "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


class EnvoyConfigs(unittest.TestCase):
    """Every Envoy configuration passes `envoy --mode validate` with the built filter."""

    @classmethod
    def setUpClass(cls):
        if not WASM.is_file():
            raise AssertionError(f"{WASM} is missing: run `make build`")
        cls.tmp = tempfile.TemporaryDirectory(prefix="deploy-check-")
        cls.addClassCleanup(cls.tmp.cleanup)

    def run_validations(self, paths):
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            results = dict(zip(paths, pool.map(envoy_validate, paths)))
        for path, (ok, output) in results.items():
            with self.subTest(config=str(path)):
                self.assertTrue(ok, f"envoy --mode validate -c {path} failed:\n{output[-3000:]}")

    def test_envoy_dir_and_compose_configs_validate(self):
        paths = sorted(ROOT.glob("envoy/*.yaml"))
        self.assertGreaterEqual(len(paths), 4, "envoy/ lost a config")
        # The compose gateways run the config their command names, from their image: map the image's paths
        # back to the repository through the Dockerfile's COPY lines, so Envoy loads the same files the
        # container would.
        compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
        for name, service in compose["services"].items():
            command = service.get("command", [])
            if "-c" not in command:
                continue
            copies = dockerfile_copies(ROOT / service["build"]["context"] / service["build"]["dockerfile"])
            config = command[command.index("-c") + 1]
            self.assertIn(config, copies, f"{name}: {config} is not in its image")
            text = (ROOT / copies[config]).read_text()
            for dst, src in copies.items():
                text = text.replace(f"filename: {dst}", f"filename: {(ROOT / src).resolve()}")
            self.assertNotIn("filename: /etc/envoy", text, f"{copies[config]}: module path not in the image")
            out = Path(self.tmp.name) / Path(copies[config]).name
            out.write_text(text)
            paths.append(out)
        self.assertGreaterEqual(len(paths), 6, "docker-compose.yaml lost a gateway")
        # The chaos run's gateway (tests/chaos/docker-compose.yaml mounts it into the gateway image).
        chaos = (ROOT / "tests/chaos/gateway.yaml").read_text()
        self.assertIn("filename: /etc/envoy/idempotency_filter.wasm", chaos)
        out = Path(self.tmp.name) / "chaos-gateway.yaml"
        out.write_text(chaos.replace("filename: /etc/envoy/idempotency_filter.wasm", f"filename: {WASM.resolve()}"))
        paths.append(out)
        self.run_validations(paths)

    def test_istio_filter_configs_load_in_envoy(self):
        """The EnvoyFilter's Wasm config as Envoy receives it (module made local, as the Istio agent does),
        and every WasmPlugin/TrafficExtension pluginConfig and EnvoyExtensionPolicy config, loaded by Envoy
        1.40 into the built filter."""
        listeners, n = [], 0
        for rel, doc in manifests("deploy/istio"):
            kind = doc["kind"]
            if kind == "EnvoyFilter":
                for patch in doc["spec"]["configPatches"]:
                    if patch["applyTo"] != "EXTENSION_CONFIG":
                        continue
                    tc = copy.deepcopy(patch["patch"]["value"]["typed_config"])
                    self.assertEqual(tc["@type"], WASM_TYPE, rel)
                    tc["config"]["vm_config"]["code"] = {"local": {"filename": str(WASM)}}
                    listeners.append(listener(f"l{n}", 20000 + n, {"name": "envoy.filters.http.wasm", "typed_config": tc}))
                    n += 1
        for entry in plugin_configs.collect():
            if entry["kind"] in ("WasmPlugin", "TrafficExtension", "EnvoyExtensionPolicy"):
                listeners.append(listener(f"l{n}", 20000 + n, wasm_filter(entry["config"], False)))
                n += 1
        self.assertGreaterEqual(
            n, 8, "expected the EnvoyFilter, six WasmPlugin/TrafficExtension and one EnvoyExtensionPolicy configs"
        )
        bootstrap = {
            "static_resources": {
                "listeners": listeners,
                "clusters": [static_cluster("upstream", 8080), static_cluster(ISTIO_KEYSTORE_CLUSTER, 8081)],
            }
        }
        path = Path(self.tmp.name) / "istio-plugin-configs.yaml"
        path.write_text(yaml.safe_dump(bootstrap))
        self.run_validations([path])

    def test_added_keystore_clusters_load_in_envoy(self):
        """The clusters the waypoint's EnvoyFilter and Envoy Gateway's EnvoyPatchPolicy add, as static
        clusters of one bootstrap (with a stand-in for the Istio agent's SDS cluster they name)."""
        clusters = [copy.deepcopy(c) for _, _, c in added_clusters()]
        self.assertEqual(len(clusters), 2, "the waypoint's and Envoy Gateway's key-store clusters")
        for i, c in enumerate(clusters):
            c["name"] = f"{c['name']}-{i}"
            c["load_assignment"]["cluster_name"] = c["name"]
        sds = static_cluster("sds-grpc", 15010)
        sds["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }}
        path = Path(self.tmp.name) / "added-clusters.yaml"
        # SDS needs the node's identity, which the Istio agent gives its Envoy.
        bootstrap = {"node": {"id": "stand-in", "cluster": "stand-in"}, "static_resources": {"clusters": [sds, *clusters]}}
        path.write_text(yaml.safe_dump(bootstrap))
        self.run_validations([path])

    def test_validation_can_fail(self):
        """A config the filter refuses (unknown field) makes envoy --mode validate fail."""
        bad = {"static_resources": {
            "listeners": [listener("bad", 20999, wasm_filter('{"no_such_field": 1}', True))],
            "clusters": [static_cluster("upstream", 8080)],
        }}
        path = Path(self.tmp.name) / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        ok, _ = envoy_validate(path)
        self.assertFalse(ok, "envoy accepted a configuration the filter must refuse")

    def test_every_config_says_when_to_use_it(self):
        for path in sorted(ROOT.glob("envoy/*.yaml")) + sorted(ROOT.glob("deploy/**/*.yaml")):
            with self.subTest(path=path.name):
                header = path.read_text().splitlines()[:3]
                self.assertTrue(header and header[0].startswith("#"), f"{path}: no header comment")

    def test_production_config_shape(self):
        doc = load_docs(ROOT / "envoy/production-redis.yaml")[0]
        ks = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "keystore")
        self.assertIn("connect_timeout", ks)
        self.assertIn("outlier_detection", ks)
        thresholds = ks["circuit_breakers"]["thresholds"]
        self.assertTrue(thresholds and all(t.get("max_retries") == 0 for t in thresholds), "callouts must not retry")
        self.assertNotIn("retry_policy", json.dumps(ks))
        wasm = next(plugin_configs.wasm_typed_configs(doc))["config"]
        self.assertEqual(wasm["failure_policy"], "FAIL_RELOAD")
        self.assertIn("base_interval", wasm["reload_config"]["backoff"])
        self.assertTrue(wasm["allow_on_headers_stop_iteration"])
        self.assertIn("stats_config", doc)
        cfg = json.loads(wasm["configuration"]["value"])
        self.assertEqual(cfg["keystore"]["cluster"], "keystore")
        # Secrets from Envoy's environment, TLS to the key store, checked against a CA and a name.
        env_keys = set(wasm["vm_config"]["environment_variables"]["host_env_keys"])
        self.assertEqual(cfg["hmac_secret"], {"env": "IDEMPOTENCY_HMAC_SECRET"})
        self.assertEqual(cfg["keystore"]["token"], {"env": "IDEMPOTENCY_KEYSTORE_TOKEN"})
        self.assertEqual(env_keys, set(STAND_IN_ENV))
        tls = ks["transport_socket"]["typed_config"]
        self.assertTrue(tls["@type"].endswith("UpstreamTlsContext"))
        self.assertIn("trusted_ca", tls["common_tls_context"]["validation_context"])
        self.assertTrue(tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"])

    def test_every_envoy_config_normalizes_paths(self):
        """`//payments` or `/x/../payments` must not pass a rule as another path: every shipped Envoy
        config normalizes the path and merges slashes before routing and filters."""
        paths = sorted(ROOT.glob("envoy/*.yaml")) + sorted(ROOT.glob("deploy/compose/*.yaml"))
        seen = 0
        for path in paths:
            for doc in load_docs(path):
                for listener_doc in doc.get("static_resources", {}).get("listeners", []):
                    for chain in listener_doc["filter_chains"]:
                        for f in chain["filters"]:
                            if f["name"] != "envoy.filters.network.http_connection_manager":
                                continue
                            with self.subTest(config=path.name):
                                hcm = f["typed_config"]
                                self.assertIs(hcm.get("normalize_path"), True, path)
                                self.assertIs(hcm.get("merge_slashes"), True, path)
                                seen += 1
        self.assertGreaterEqual(seen, 6)


class KubernetesManifests(unittest.TestCase):
    def test_builtin_kinds_validate_strictly(self):
        seen = 0
        for rel, doc in all_manifests():
            if doc["apiVersion"].split("/")[0] in CRD_GROUPS:
                continue
            with self.subTest(resource=f"{rel} {doc['kind']}/{doc['metadata']['name']}"):
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                seen += 1
        self.assertGreaterEqual(seen, 9)

    def test_crd_kinds_match_documented_fields(self):
        seen = set()
        for rel, doc in all_manifests():
            if doc["apiVersion"].split("/")[0] not in CRD_GROUPS:
                continue
            with self.subTest(resource=f"{rel} {doc['kind']}"):
                schema = SCHEMAS.get(doc["kind"])
                self.assertIsNotNone(schema, f"{rel}: no schema for kind {doc['kind']}")
                jsonschema.validate(doc, schema)
                seen.add(doc["kind"])
        self.assertEqual(seen, {
            "WasmPlugin", "TrafficExtension", "EnvoyFilter", "ServiceEntry", "DestinationRule",
            "Gateway", "HTTPRoute", "EnvoyExtensionPolicy", "EnvoyPatchPolicy", "EnvoyProxy",
        })

    def test_validators_can_fail(self):
        dep = next(d for _, d in manifests("deploy/kubernetes") if d["kind"] == "Deployment")
        bad = copy.deepcopy(dep)
        bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
        with self.assertRaises(Exception):
            kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
        wp = next(d for _, d in manifests("deploy/istio") if d["kind"] == "WasmPlugin")
        bad = copy.deepcopy(wp)
        bad["spec"]["failStrategy"] = "FAIL_CLOSED"  # the Envoy spelling, not Istio's
        with self.assertRaises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMAS["WasmPlugin"])
        te = next(d for _, d in manifests("deploy/istio") if d["kind"] == "TrafficExtension")
        bad = copy.deepcopy(te)
        bad["spec"]["pluginConfig"] = bad["spec"]["wasm"].pop("pluginConfig")  # WasmPlugin's place
        with self.assertRaises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMAS["TrafficExtension"])

    def test_crd_schemas_refuse_what_their_apis_refuse(self):
        """Every kind: a misspelt field fails; and the rules of each API that a manifest could break."""
        def doc(kind, name=None):
            return copy.deepcopy(next(d for _, d in all_manifests()
                                      if d["kind"] == kind and name in (None, d["metadata"]["name"])))

        def refused(bad, why):
            with self.subTest(kind=bad["kind"], why=why), self.assertRaises(jsonschema.ValidationError):
                jsonschema.validate(bad, SCHEMAS[bad["kind"]])

        waypoint = "idempotency-payments-waypoint"
        misspelt = {  # kind: (document name or None for the first, field of spec, misspelling)
            "WasmPlugin": (waypoint, "targetRefs", "targetRef"),  # the deprecated, hidden singular
            "TrafficExtension": (waypoint, "targetRefs", "targetRef"),
            "EnvoyFilter": (None, "configPatches", "configPatch"),
            "ServiceEntry": (None, "hosts", "host"),
            "DestinationRule": (None, "trafficPolicy", "trafficPolicies"),
            "Gateway": (None, "listeners", "listener"),
            "HTTPRoute": (None, "parentRefs", "parentRef"),
            "EnvoyExtensionPolicy": (None, "wasm", "wasms"),
            "EnvoyPatchPolicy": (None, "jsonPatches", "jsonPatch"),
            "EnvoyProxy": (None, "provider", "providers"),
        }
        self.assertEqual(set(misspelt), set(SCHEMAS), "a negative case for every kind")
        for kind, (name, field, wrong) in misspelt.items():
            bad = doc(kind, name)
            bad["spec"][wrong] = bad["spec"].pop(field)
            refused(bad, f"{field} misspelt {wrong}")

        wp = doc("WasmPlugin", "idempotency-payments-waypoint")
        both = copy.deepcopy(wp)
        both["spec"]["selector"] = {"matchLabels": {"app": "payments"}}
        refused(both, "selector and targetRefs together")
        for ref, why in [
            ({"group": "apps", "kind": "Service", "name": "payments"}, "a Service of another group"),
            ({"kind": "Gateway", "name": "waypoint"}, "a Gateway without its group"),
            ({"group": "", "kind": "Deployment", "name": "payments"}, "a kind Istio cannot attach to"),
            ({"group": "", "kind": "Service", "name": "payments", "namespace": "other"}, "another namespace"),
        ]:
            bad = copy.deepcopy(wp)
            bad["spec"]["targetRefs"] = [ref]
            refused(bad, why)
        bad = copy.deepcopy(wp)
        bad["spec"]["targetRefs"] = [{"group": "", "kind": "Service", "name": f"s{i}"} for i in range(17)]
        refused(bad, "more than 16 targetRefs")
        te = doc("TrafficExtension", "idempotency-payments-waypoint")
        te["spec"]["selector"] = {"matchLabels": {"app": "payments"}}
        refused(te, "TrafficExtension: selector and targetRefs together")
        ef = doc("EnvoyFilter", "idempotency-keystore-cluster")
        ef["spec"]["workloadSelector"] = {"labels": {"app": "payments"}}
        refused(ef, "EnvoyFilter: workloadSelector and targetRefs together")
        ef = doc("EnvoyFilter", "idempotency-keystore-cluster")
        ef["spec"]["configPatches"][0]["match"] = {"context": "WAYPOINT"}
        refused(ef, "EnvoyFilter: context WAYPOINT without a waypoint match")

        gw = doc("Gateway", "waypoint")
        gw["spec"]["listeners"][0]["port"] = 0
        refused(gw, "Gateway: port 0")
        route = doc("HTTPRoute")
        route["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Prefix"
        refused(route, "HTTPRoute: path type Prefix (PathPrefix)")

        eep = doc("EnvoyExtensionPolicy")
        for change, why in [
            (lambda s: s["targetRefs"][0].update(kind="Service", group=""), "a Service target"),
            (lambda s: s.update(targetRef=s["targetRefs"][0]), "targetRef and targetRefs together"),
            (lambda s: s["wasm"][0]["code"].update(type="OCI"), "code type OCI"),
            (lambda s: s["wasm"][0]["code"].update(type="HTTP"), "type HTTP with an image source"),
            (lambda s: s["wasm"][0].update(failOpen="false"), "failOpen as a string"),
            (lambda s: s["wasm"][0]["code"]["image"].update(url="oci://registry.example.com/f:1"), "an oci:// url"),
        ]:
            bad = copy.deepcopy(eep)
            change(bad["spec"])
            refused(bad, f"EnvoyExtensionPolicy: {why}")
        epp = doc("EnvoyPatchPolicy")
        epp["spec"]["jsonPatches"][0]["operation"]["op"] = "merge"
        refused(epp, "EnvoyPatchPolicy: op merge")
        epp = doc("EnvoyPatchPolicy")
        epp["spec"]["targetRef"]["kind"] = "HTTPRoute"
        refused(epp, "EnvoyPatchPolicy: an HTTPRoute target")
        proxy = doc("EnvoyProxy")
        proxy["spec"]["provider"]["type"] = "Docker"
        refused(proxy, "EnvoyProxy: provider Docker")

    def resources(self):
        return {(d["kind"], d["metadata"]["name"]): d for _, d in manifests("deploy/kubernetes")}

    def test_keystore_deployment(self):
        res = self.resources()
        dep = res[("Deployment", "idempotency-keystore")]
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        c = pod["containers"][0]
        self.assertEqual(spec["replicas"], 2)
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertIn("requests", c["resources"])
        self.assertIn("limits", c["resources"])
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertFalse(c["securityContext"]["allowPrivilegeEscalation"])
        env = {e["name"]: e for e in c["env"]}
        self.assertEqual(env["KEYSTORE_BACKEND"]["value"], "redis")
        secret_ref = env["KEYSTORE_TOKEN"]["valueFrom"]["secretKeyRef"]
        secret = res[("Secret", secret_ref["name"])]
        self.assertIn(secret_ref["key"], secret["stringData"])
        # The admin token comes from a Secret of its own, not shipped (the admin API is off until an
        # operator creates it), so the key store starts without it.
        admin_ref = env["KEYSTORE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
        self.assertNotEqual(admin_ref["name"], secret_ref["name"])
        self.assertIs(admin_ref["optional"], True)
        self.assertNotIn(("Secret", admin_ref["name"]), res)
        # The Redis URL names the Redis Service.
        redis_svc = res[("Service", "idempotency-redis")]
        self.assertIn(f"{redis_svc['metadata']['name']}.{redis_svc['metadata']['namespace']}", env["KEYSTORE_REDIS_URL"]["value"])
        self.assertIn(":6379", env["KEYSTORE_REDIS_URL"]["value"])
        # PDB and Service select the Deployment's pods; the Service serves 8081 as HTTP.
        labels = spec["template"]["metadata"]["labels"]
        pdb = res[("PodDisruptionBudget", "idempotency-keystore")]
        self.assertLessEqual(pdb["spec"]["selector"]["matchLabels"].items(), labels.items())
        self.assertLess(pdb["spec"]["minAvailable"], spec["replicas"])
        svc = res[("Service", "idempotency-keystore")]
        self.assertLessEqual(svc["spec"]["selector"].items(), labels.items())
        self.assertEqual([p["port"] for p in svc["spec"]["ports"]], [8081])
        self.assertEqual(f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local", KEYSTORE_FQDN)

    def test_redis_appendonly(self):
        res = self.resources()
        sts = res[("StatefulSet", "idempotency-redis")]
        args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
        self.assertEqual(args[args.index("--appendonly") + 1], "yes")
        svc = res[("Service", "idempotency-redis")]
        self.assertLessEqual(svc["spec"]["selector"].items(), sts["spec"]["template"]["metadata"]["labels"].items())

    def test_redis_is_bounded_and_needs_a_password(self):
        res = self.resources()
        sts = res[("StatefulSet", "idempotency-redis")]
        c = sts["spec"]["template"]["spec"]["containers"][0]
        args = c["args"]
        self.assertEqual(args[args.index("--maxmemory-policy") + 1], "noeviction")
        maxmemory = args[args.index("--maxmemory") + 1]
        units = {"mb": 1 << 20, "gb": 1 << 30}
        m = re.fullmatch(r"(\d+)(mb|gb)", maxmemory)
        self.assertTrue(m, maxmemory)
        limit = c["resources"]["limits"]["memory"]
        lm = re.fullmatch(r"(\d+)(Mi|Gi)", limit)
        limit_bytes = int(lm.group(1)) * {"Mi": 1 << 20, "Gi": 1 << 30}[lm.group(2)]
        self.assertLess(int(m.group(1)) * units[m.group(2)], limit_bytes * 0.8, "maxmemory leaves room under the limit")
        self.assertIn("--requirepass", " ".join(args))
        env = {e["name"]: e for e in c["env"]}
        ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        self.assertIn(ref["key"], res[("Secret", ref["name"])]["stringData"])
        ks = res[("Deployment", "idempotency-keystore")]["spec"]["template"]["spec"]["containers"][0]
        kenv = {e["name"]: e for e in ks["env"]}
        self.assertEqual(kenv["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"], ref)
        self.assertIn("$(REDIS_PASSWORD)@", kenv["KEYSTORE_REDIS_URL"]["value"])

    def test_network_policies(self):
        """Only the key store reaches Redis, and only Envoys (sidecars and gateways) reach the key store."""
        res = self.resources()
        pols = {name: d for (kind, name), d in res.items() if kind == "NetworkPolicy"}
        redis = next(p for p in pols.values() if p["spec"]["podSelector"]["matchLabels"].get("app") == "idempotency-redis")
        self.assertEqual(redis["spec"]["policyTypes"], ["Ingress"])
        (rule,) = redis["spec"]["ingress"]
        self.assertEqual([f["podSelector"]["matchLabels"] for f in rule["from"]], [{"app": "idempotency-keystore"}])
        self.assertEqual([p["port"] for p in rule["ports"]], [6379])
        ks = next(p for p in pols.values() if p["spec"]["podSelector"]["matchLabels"].get("app") == "idempotency-keystore")
        (rule,) = ks["spec"]["ingress"]
        self.assertEqual([p["port"] for p in rule["ports"]], [8081])
        for peer in rule["from"]:
            self.assertIn("namespaceSelector", peer)
            self.assertTrue(peer["namespaceSelector"]["matchLabels"], "a label selects the Envoys' namespaces")


class IstioRollout(unittest.TestCase):
    def docs(self, kind):
        return [(rel, d) for rel, d in manifests("deploy/istio") if d["kind"] == kind]

    def secret_token(self):
        for _, d in manifests("deploy/kubernetes"):
            if d["kind"] == "Secret" and d["metadata"]["name"] == "idempotency-keystore-token":
                return d["stringData"]["token"]
        raise AssertionError("Secret idempotency-keystore-token not found")

    def test_plugin_rollouts(self):
        self.secret_token()
        scopes = set()
        for kind in ("WasmPlugin", "TrafficExtension"):
            for rel, d in self.docs(kind):
                with self.subTest(file=rel):
                    spec = d["spec"]
                    wasm = spec if kind == "WasmPlugin" else spec["wasm"]
                    self.assertIn(spec["phase"], ("AUTHZ", "STATS"), "must run after authentication")
                    self.assertIn(wasm["failStrategy"], ("FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"))
                    self.assertTrue(wasm["url"].startswith("oci://"))
                    self.assertEqual([m["mode"] for m in spec["match"]], ["SERVER"], "inbound only: one pass per request")
                    cfg = wasm["pluginConfig"]
                    self.assertEqual(cfg["headers_mode"], "stream")
                    # A waypoint has no outbound cluster for the key store: it names the one added for it.
                    want_cluster = WAYPOINT_KEYSTORE_CLUSTER if "targetRefs" in spec else ISTIO_KEYSTORE_CLUSTER
                    self.assertEqual(cfg["keystore"]["cluster"], want_cluster)
                    self.assertEqual(cfg["keystore"]["token"], {"env": "IDEMPOTENCY_KEYSTORE_TOKEN"})
                    self.assertEqual(cfg["hmac_secret"], {"env": "IDEMPOTENCY_HMAC_SECRET"})
                    vm_env = {e["name"]: e.get("valueFrom") for e in wasm["vmConfig"]["env"]}
                    self.assertEqual(vm_env, {k: "HOST" for k in STAND_IN_ENV}, "the sidecar's environment fills them")
                    if "selector" in spec:
                        scopes.add((kind, "workload"))
                    elif "targetRefs" in spec:
                        scopes.add((kind, "waypoint"))
                    else:
                        self.assertEqual(d["metadata"]["namespace"], "istio-system", "mesh-wide = root namespace")
                        scopes.add((kind, "mesh"))
        self.assertEqual(
            scopes, {(k, s) for k in ("WasmPlugin", "TrafficExtension") for s in ("mesh", "workload", "waypoint")}
        )

    def test_envoyfilter_holds_headers(self):
        (rel, ef), = [(rel, d) for rel, d in self.docs("EnvoyFilter")
                      if any(p["applyTo"] == "EXTENSION_CONFIG" for p in d["spec"]["configPatches"])]
        patches = ef["spec"]["configPatches"]
        ext = next(p for p in patches if p["applyTo"] == "EXTENSION_CONFIG")
        http = next(p for p in patches if p["applyTo"] == "HTTP_FILTER")
        self.assertEqual(ext["patch"]["operation"], "ADD")
        config = ext["patch"]["value"]["typed_config"]["config"]
        self.assertTrue(config["allow_on_headers_stop_iteration"])
        self.assertEqual(config["failure_policy"], "FAIL_RELOAD")
        cfg = json.loads(config["configuration"]["value"])
        self.assertEqual(cfg["headers_mode"], "hold")
        self.assertEqual(cfg["keystore"]["cluster"], ISTIO_KEYSTORE_CLUSTER)
        self.assertEqual(cfg["keystore"]["token"], {"env": "IDEMPOTENCY_KEYSTORE_TOKEN"})
        self.assertEqual(set(config["vm_config"]["environment_variables"]["host_env_keys"]), set(STAND_IN_ENV))
        # The HTTP filter refers to the extension config by name and sits before the router.
        self.assertEqual(http["patch"]["value"]["name"], ext["patch"]["value"]["name"])
        self.assertEqual(http["patch"]["operation"], "INSERT_BEFORE")
        self.assertEqual(http["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"], "envoy.filters.http.router")
        self.assertIn(WASM_TYPE, http["patch"]["value"]["config_discovery"]["type_urls"])

    def test_waypoint_rollout(self):
        """The waypoint forms attach to a Service of their namespace that a waypoint of the class
        istio-waypoint serves; that waypoint's proxy gets both secrets from Secrets and the key-store
        cluster the pluginConfig names, towards the key store Service with its identity checked."""
        gateways = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for _, d in self.docs("Gateway")}
        config_maps = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for _, d in self.docs("ConfigMap")}
        clusters = {(doc["metadata"]["namespace"], c["name"]): (doc, c)
                    for rel, doc, c in added_clusters() if rel.startswith("deploy/istio/")}
        seen = 0
        for kind in ("WasmPlugin", "TrafficExtension"):
            for rel, d in self.docs(kind):
                spec = d["spec"]
                if "targetRefs" not in spec:
                    continue
                with self.subTest(file=rel):
                    seen += 1
                    ns = d["metadata"]["namespace"]
                    self.assertNotIn("selector", spec)
                    self.assertEqual(spec["targetRefs"], [{"group": "", "kind": "Service", "name": "payments"}])
                    self.assertEqual([m["mode"] for m in spec["match"]], ["SERVER"], "a waypoint's chain is inbound")
                    waypoint = gateways[(ns, "waypoint")]
                    self.assertEqual(waypoint["spec"]["gatewayClassName"], "istio-waypoint")
                    self.assertEqual(waypoint["metadata"]["labels"]["istio.io/waypoint-for"], "service")
                    self.assertEqual([(lst["port"], lst["protocol"]) for lst in waypoint["spec"]["listeners"]],
                                     [(15008, "HBONE")])
                    ref = waypoint["spec"]["infrastructure"]["parametersRef"]
                    self.assertEqual((ref["group"], ref["kind"]), ("", "ConfigMap"))
                    overlay = yaml.safe_load(config_maps[(ns, ref["name"])]["data"]["deployment"])
                    (proxy,) = overlay["spec"]["template"]["spec"]["containers"]
                    self.assertEqual(proxy["name"], "istio-proxy")
                    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in proxy["env"]}
                    self.assertEqual(env, {"IDEMPOTENCY_HMAC_SECRET": "idempotency-hmac-secret",
                                           "IDEMPOTENCY_KEYSTORE_TOKEN": "idempotency-keystore-token"})
                    wasm = spec if kind == "WasmPlugin" else spec["wasm"]
                    self.assertEqual({e["name"] for e in wasm["vmConfig"]["env"]}, set(env))
                    ef, cluster = clusters[(ns, wasm["pluginConfig"]["keystore"]["cluster"])]
                    self.assertEqual(ef["spec"]["targetRefs"],
                                     [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}])
                    assert_reaches_keystore(self, cluster)
                    tls = cluster["transport_socket"]["typed_config"]["common_tls_context"]
                    sans = tls["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"]
                    self.assertEqual([s["matcher"]["exact"] for s in sans],
                                     ["spiffe://cluster.local/ns/idempotency/sa/idempotency-keystore"])
        self.assertEqual(seen, 2)

    def test_external_keystore(self):
        (rel, se), = self.docs("ServiceEntry")
        host = se["spec"]["hosts"][0]
        self.assertEqual(se["spec"]["location"], "MESH_EXTERNAL")
        drs = {d["spec"]["host"]: d for _, d in self.docs("DestinationRule")}
        self.assertIn(host, drs, "the external key store needs its DestinationRule")
        self.assertIn(KEYSTORE_FQDN, drs, "the in-mesh key store has its DestinationRule")
        for h, dr in drs.items():
            pool = dr["spec"]["trafficPolicy"]["connectionPool"]
            self.assertEqual(pool["http"]["maxRetries"], 0, h)
            self.assertIn("connectTimeout", pool["tcp"], h)
            self.assertIn("outlierDetection", dr["spec"]["trafficPolicy"], h)
        # The cluster name the ServiceEntry yields is the one the file documents for pluginConfig.
        port = se["spec"]["ports"][0]["number"]
        self.assertIn(f"outbound|{port}||{host}", (ROOT / rel).read_text())


class EnvoyGatewayRollout(unittest.TestCase):
    """deploy/envoy-gateway/: the policy attaches to a route of a Gateway whose Envoy gets both secrets
    and the key-store cluster the filter configuration names."""

    def resources(self):
        return {(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]): d
                for _, d in manifests("deploy/envoy-gateway")}

    def test_extension_policy_and_what_it_needs(self):
        res = self.resources()
        (policy,) = [d for (kind, _, _), d in res.items() if kind == "EnvoyExtensionPolicy"]
        ns = policy["metadata"]["namespace"]
        (target,) = policy["spec"]["targetRefs"]
        route = res[(target["kind"], ns, target["name"])]
        self.assertEqual(route["kind"], "HTTPRoute")
        (parent,) = route["spec"]["parentRefs"]
        gateway = res[("Gateway", ns, parent["name"])]
        self.assertEqual(gateway["spec"]["gatewayClassName"], "eg")
        (wasm,) = policy["spec"]["wasm"]
        self.assertIs(wasm["failOpen"], False, "a failed VM blocks the route, never skips the filter")
        self.assertEqual(wasm["code"]["type"], "Image")
        cfg = wasm["config"]
        self.assertEqual(cfg["headers_mode"], "stream", "Envoy Gateway cannot hold the request headers")
        self.assertEqual(cfg["hmac_secret"], {"env": "IDEMPOTENCY_HMAC_SECRET"})
        self.assertEqual(cfg["keystore"]["token"], {"env": "IDEMPOTENCY_KEYSTORE_TOKEN"})
        self.assertEqual(set(wasm["env"]["hostKeys"]), set(STAND_IN_ENV))
        # The Gateway's EnvoyProxy fills those variables from Secrets.
        ref = gateway["spec"]["infrastructure"]["parametersRef"]
        proxy = res[(ref["kind"], ns, ref["name"])]
        env = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"]
        self.assertEqual({e["name"] for e in env if "secretKeyRef" in e["valueFrom"]}, set(STAND_IN_ENV))
        # The EnvoyPatchPolicy on that Gateway adds the cluster the configuration names.
        added = {c["name"]: (doc, c) for rel, doc, c in added_clusters() if rel.startswith("deploy/envoy-gateway/")}
        patch, cluster = added[cfg["keystore"]["cluster"]]
        self.assertEqual(patch["spec"]["targetRef"],
                         {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway["metadata"]["name"]})
        self.assertEqual(patch["metadata"]["namespace"], ns, "an EnvoyPatchPolicy acts in its Gateway's namespace")
        assert_reaches_keystore(self, cluster)


class OciImage(unittest.TestCase):
    """The layout `make oci` wrote to target/oci is a valid single-layer compat image of the built module."""

    def blob(self, desc):
        self.assertRegex(desc["digest"], r"^sha256:[0-9a-f]{64}$")
        data = (OCI / "blobs/sha256" / desc["digest"].split(":", 1)[1]).read_bytes()
        self.assertEqual(hashlib.sha256(data).hexdigest(), desc["digest"].split(":", 1)[1], "digest != content")
        self.assertEqual(len(data), desc["size"], "size != content")
        return data

    def test_layout(self):
        self.assertTrue((OCI / "index.json").is_file(), "target/oci is missing: run `make oci`")
        self.assertEqual(json.loads((OCI / "oci-layout").read_text()), {"imageLayoutVersion": "1.0.0"})
        index = json.loads((OCI / "index.json").read_text())
        self.assertEqual(index["schemaVersion"], 2)
        self.assertEqual(len(index["manifests"]), 1)
        mdesc = index["manifests"][0]
        self.assertEqual(mdesc["mediaType"], "application/vnd.oci.image.manifest.v1+json")
        self.assertTrue(mdesc["annotations"]["org.opencontainers.image.ref.name"])
        manifest = json.loads(self.blob(mdesc))
        self.assertEqual(manifest["schemaVersion"], 2)
        self.assertEqual(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json")
        self.assertEqual(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json")
        config = json.loads(self.blob(manifest["config"]))
        self.assertEqual(len(manifest["layers"]), 1, "compat variant: exactly one layer")
        ldesc = manifest["layers"][0]
        self.assertEqual(ldesc["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip")
        tar_bytes = gzip.decompress(self.blob(ldesc))
        self.assertEqual(config["rootfs"], {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"]})
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            members = tar.getmembers()
            self.assertEqual([m.name for m in members], ["plugin.wasm"])
            self.assertTrue(members[0].isfile())
            module = tar.extractfile(members[0]).read()
        self.assertEqual(module, WASM.read_bytes(), "the layer's plugin.wasm differs from the built module")
        # Every blob in the layout is referenced (no stale leftovers of an earlier build).
        referenced = {d["digest"].split(":", 1)[1] for d in (mdesc, manifest["config"], ldesc)}
        self.assertEqual({p.name for p in (OCI / "blobs/sha256").iterdir()}, referenced)

    def test_umoci_reads_it(self):
        """An independent OCI implementation (umoci) unpacks the image to the same plugin.wasm."""
        umoci = shutil.which("umoci")
        self.assertIsNotNone(umoci, "umoci not found: run `make setup`")
        tag = json.loads((OCI / "index.json").read_text())["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "bundle"
            proc = subprocess.run([umoci, "raw", "unpack", "--rootless", "--image", f"{OCI}:{tag}", str(bundle)],
                                  capture_output=True, text=True, timeout=60)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(sorted(p.name for p in bundle.iterdir()), ["plugin.wasm"])
            self.assertEqual((bundle / "plugin.wasm").read_bytes(), WASM.read_bytes())


class DockerCompose(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())

    def test_compose_config_parses(self):
        proc = subprocess.run(compose_cmd() + ["-f", str(ROOT / "docker-compose.yaml"), "config", "-q"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_compose_config_can_fail(self):
        broken = copy.deepcopy(self.compose)
        broken["services"]["keystore"]["depends_on"]["redis"]["condition"] = "service_maybe"
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=ROOT, delete=False) as f:
            yaml.safe_dump(broken, f)
        try:
            proc = subprocess.run(compose_cmd() + ["-f", f.name, "config", "-q"],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60)
        finally:
            os.unlink(f.name)
        self.assertNotEqual(proc.returncode, 0, "docker-compose accepted a broken file")

    def test_services_ports_and_health(self):
        services = self.compose["services"]
        self.assertEqual(set(services), {"payments", "keystore", "redis", "envoy-a", "envoy-b", "prometheus"})
        published = set()
        for name, svc in services.items():
            for port in svc.get("ports", []):
                with self.subTest(service=name, port=port):
                    parts = str(port).split(":")
                    self.assertEqual(len(parts), 3, "ports are published as 127.0.0.1:HOST:CONTAINER")
                    host, host_port, _container = parts
                    self.assertEqual(host, "127.0.0.1", "ports are published on the loopback address only")
                    published.add(int(host_port))
            for vol in svc.get("volumes", []):
                self.assertIn(vol.split(":")[0], self.compose["volumes"], f"{name}: {vol} is not a named volume")
        self.assertEqual(published, {8080, 8081, 9090, 10000, 10001, 9901, 9902})
        for name in ("redis", "envoy-a", "envoy-b", "prometheus"):
            self.assertEqual(services[name]["healthcheck"]["test"][0], "CMD", name)
        self.assertEqual(services["keystore"]["depends_on"]["redis"]["condition"], "service_healthy")
        env = services["keystore"]["environment"]
        self.assertEqual(env["KEYSTORE_BACKEND"], "redis")
        self.assertIn("@redis:6379", env["KEYSTORE_REDIS_URL"], "the key store authenticates to Redis")
        self.assertTrue(env["KEYSTORE_TOKEN"], "the key store requires its token")
        # The key store gives up on Redis before the gateways give up on the key store.
        for g in ("a", "b"):
            doc = load_docs(ROOT / f"deploy/compose/gateway-{g}.yaml")[0]
            cfg = json.loads(next(plugin_configs.wasm_typed_configs(doc))["config"]["configuration"]["value"])
            self.assertLess(int(env["KEYSTORE_BACKEND_TIMEOUT_MS"]), cfg["keystore"]["timeout_ms"], g)
        self.assertIn("redis-data:/data", services["redis"]["volumes"])
        conf = dict(l.split(None, 1) for l in (ROOT / "deploy/compose/redis.conf").read_text().splitlines()
                    if l.strip() and not l.startswith("#"))
        self.assertEqual(conf["appendonly"], "yes")
        self.assertEqual(conf["dir"], "/data")
        self.assertIn("requirepass", conf)
        self.assertEqual(conf["maxmemory-policy"], "noeviction")
        self.assertIn("maxmemory", conf)

    def test_images_build_from_base_image_arguments(self):
        """Every service is built; every base image is a build argument whose default is the public image."""
        public = {
            "RUST_IMAGE": "rust:1.95-slim-bookworm",
            "RUNTIME_IMAGE": "gcr.io/distroless/cc-debian12:nonroot",
            "ENVOY_IMAGE": "envoyproxy/envoy:v1.40-latest",
            "REDIS_IMAGE": "redis:7-alpine",
            "PROMETHEUS_IMAGE": "prom/prometheus:v3.5.0",
        }
        seen = set()
        for name, svc in self.compose["services"].items():
            with self.subTest(service=name):
                self.assertIn("build", svc, f"{name} must be built from a Dockerfile of the repository")
                self.assertTrue(svc["image"].startswith("idempotency-demo/"), svc["image"])
                ctx = ROOT / svc["build"]["context"]
                dockerfile = ctx / svc["build"]["dockerfile"]
                self.assertTrue(dockerfile.is_file(), f"{name}: {dockerfile}")
                self.check_dockerfile(dockerfile, ctx)
                # A syntax directive would make BuildKit pull its frontend image from a registry.
                self.assertNotRegex(dockerfile.read_text(), r"(?im)^#\s*syntax\s*=", dockerfile)
                args, stages, in_stage = {}, {"scratch"}, False
                for word, rest in dockerfile_instructions(dockerfile):
                    if word == "ARG" and not in_stage:
                        key, _, default = rest.partition("=")
                        args[key] = default
                    elif word == "FROM":
                        in_stage = True
                        image, *alias = rest.split()
                        m = re.fullmatch(r"\$\{(\w+)\}", image)
                        if m:
                            self.assertIn(m.group(1), args, f"{dockerfile}: FROM {image} is not a global ARG")
                            if m.group(1) in public:
                                self.assertEqual(args[m.group(1)], public[m.group(1)], f"{dockerfile}: {m.group(1)}")
                                seen.add(m.group(1))
                        else:
                            self.assertIn(image, stages, f"{dockerfile}: FROM {image} names an image, not an argument")
                        if alias:
                            stages.add(alias[-1])
                if "BINARY" in args:
                    self.assertEqual(args["BINARY"], "source", f"{dockerfile}: users build from source")
                    self.assertIn(args["BINARY"], stages)
                    self.assertIn("prebuilt", stages)
        self.assertEqual(seen, set(public))

    def test_gateway_image_holds_the_module_and_both_configs(self):
        services = self.compose["services"]
        for g in ("a", "b"):
            svc = services[f"envoy-{g}"]
            copies = dockerfile_copies(ROOT / svc["build"]["context"] / svc["build"]["dockerfile"])
            self.assertEqual(copies["/etc/envoy/idempotency_filter.wasm"],
                             "target/wasm32-wasip1/release/idempotency_filter.wasm")
            self.assertEqual(copies[f"/etc/envoy/gateway-{g}.yaml"], f"deploy/compose/gateway-{g}.yaml")
        self.assertEqual(services["envoy-a"]["build"], services["envoy-b"]["build"])

    def test_prometheus_scrapes_the_gateways_and_the_key_store(self):
        services = self.compose["services"]
        prom = yaml.safe_load((ROOT / "deploy/observability/prometheus.yml").read_text())
        jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
        envoy_targets = {t for c in jobs["envoy"]["static_configs"] for t in c["targets"]}
        self.assertEqual(jobs["envoy"]["metrics_path"], "/stats/prometheus")
        admin = set()
        for g in ("a", "b"):
            doc = load_docs(ROOT / f"deploy/compose/gateway-{g}.yaml")[0]
            admin.add(f"envoy-{g}:{doc['admin']['address']['socket_address']['port_value']}")
        self.assertEqual(envoy_targets, admin)
        self.assertEqual(jobs["keystore"]["metrics_path"], "/metrics")
        ks_port = services["keystore"]["environment"]["KEYSTORE_LISTEN"].rsplit(":", 1)[1]
        self.assertEqual({t for c in jobs["keystore"]["static_configs"] for t in c["targets"]}, {f"keystore:{ks_port}"})
        copies = dockerfile_copies(ROOT / "deploy/observability/prometheus.Dockerfile")
        self.assertEqual(copies["/etc/prometheus/prometheus.yml"], "deploy/observability/prometheus.yml")
        for rule_file in prom["rule_files"]:
            self.assertIn(rule_file, copies, "every rule file is in the image")

    def check_dockerfile(self, dockerfile, ctx):
        """Every COPY source of the build context exists, and is not excluded by .dockerignore."""
        ignored = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
                   if l.strip() and not l.startswith("#")]
        for line in dockerfile.read_text().splitlines():
            m = re.match(r"^COPY\s+(?!--from)(.+)$", line.strip())
            if not m:
                continue
            *sources, _dest = m.group(1).split()
            for src in sources:
                with self.subTest(dockerfile=dockerfile.name, src=src):
                    # target/compose/ holds the host's release binaries only while `make compose-test` runs.
                    if not src.startswith("target/compose/"):
                        self.assertTrue((ctx / src).exists(), f"{dockerfile}: COPY {src} missing")
                    top = src.split("/")[0]
                    excluded = top in ignored and f"!{src}" not in ignored
                    self.assertFalse(excluded, f"{dockerfile}: COPY {src} is excluded by .dockerignore")

    def test_plugin_dockerfile(self):
        text = (ROOT / "Dockerfile").read_text()
        self.assertRegex(text, r"(?m)^FROM scratch$")
        self.assertRegex(text, r"(?m)^COPY target/wasm32-wasip1/release/idempotency_filter\.wasm \./plugin\.wasm$")
        self.check_dockerfile(ROOT / "Dockerfile", ROOT)


class Observability(unittest.TestCase):
    """deploy/observability/: promtool accepts the rules, the Prometheus configuration and every dashboard
    query; the metric names are those the code defines. (The compose test checks, against the live
    Prometheus, that every dashboard query returns data and that the rules evaluate.)"""

    OBS = ROOT / "deploy/observability"

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="observability-check-")
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.rules = yaml.safe_load((cls.OBS / "alerts.yml").read_text())
        cls.crd = yaml.safe_load((cls.OBS / "prometheusrule.yaml").read_text())

    def write(self, name, doc):
        path = Path(self.tmp.name) / name
        path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
        return path

    def test_rule_files_pass_promtool(self):
        for name, doc in (("alerts.yml", self.rules), ("prometheusrule-spec.yml", self.crd["spec"])):
            with self.subTest(rules=name):
                ok, out = run_promtool("check", "rules", self.write(name, doc))
                self.assertTrue(ok, out)

    def test_prometheusrule_is_the_rule_file(self):
        self.assertEqual(self.crd["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(self.crd["kind"], "PrometheusRule")
        self.assertEqual(self.crd["metadata"]["namespace"], "idempotency")
        self.assertEqual(set(self.crd["spec"]), {"groups"})
        self.assertEqual(self.crd["spec"]["groups"], self.rules["groups"], "prometheusrule.yaml != alerts.yml")

    def test_alerts_cover_the_failure_signals(self):
        alerts = [r for g in self.rules["groups"] for r in g["rules"]]
        used = set().union(*(observability.metric_names(r["expr"]) for r in alerts))
        for metric in ("idempotency_store_error", "keystore_backend_errors_total", "idempotency_fail_open",
                       "idempotency_unknown_outcome", "idempotency_renewal_refused"):
            self.assertIn(metric, used, f"no alert on {metric}")
        for r in alerts:
            with self.subTest(alert=r["alert"]):
                self.assertIn(r["labels"]["severity"], ("warning", "critical"))
                self.assertTrue(r["annotations"]["summary"] and r["annotations"]["description"])

    def test_dashboard_queries_parse(self):
        queries = observability.dashboard_queries()
        self.assertGreaterEqual(len(queries), 20)
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, _, expr) in enumerate(queries)]}]}
        ok, out = run_promtool("check", "rules", self.write("dashboard.yml", rules))
        self.assertTrue(ok, out)
        # The check can fail: a query promtool cannot parse is refused.
        broken = {"groups": [{"name": "b", "rules": [{"record": "b:q", "expr": "sum(rate(idempotency_executed[1m])"}]}]}
        ok, _ = run_promtool("check", "rules", self.write("broken.yml", broken))
        self.assertFalse(ok, "promtool accepted an unbalanced query")

    def test_dashboard_shape(self):
        dash = observability.dashboard()
        self.assertTrue(dash["uid"] and dash["title"])
        ids = [p["id"] for p in dash["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids are unique")
        self.assertIn("datasource", [v["name"] for v in dash["templating"]["list"]])
        for p in dash["panels"]:
            with self.subTest(panel=p["title"]):
                self.assertEqual(p["datasource"]["uid"], "${datasource}")
                refs = [t["refId"] for t in p["targets"]]
                self.assertEqual(len(refs), len(set(refs)))
        # Every counter of the filter has its line in the outcomes panel.
        outcomes = next(p for p in dash["panels"] if p["title"].startswith("Outcomes per second"))
        shown = set().union(*(observability.metric_names(t["expr"]) for t in outcomes["targets"]))
        self.assertEqual(shown, observability.filter_metric_names())
        # The observe-mode panel shows what a rollout decides on (docs/deploy.md, "Rolling out").
        observe = next(p for p in dash["panels"] if p["title"].startswith("Observe mode"))
        shown = set().union(*(observability.metric_names(t["expr"]) for t in observe["targets"]))
        self.assertEqual(shown, {f"idempotency_observe_{k}" for k in (
            "executed", "replayed", "conflict", "mismatch", "missing_key", "invalid_key", "unauthenticated")})

    def test_metric_names_are_defined(self):
        """Every metric a dashboard query or an alert names: a filter counter as Envoy exports it, a key-store
        metric, or one of Envoy's keystore-cluster statistics (which the compose test sees live)."""
        known = (observability.filter_metric_names() | observability.observe_metric_names()
                 | observability.keystore_metric_names())
        self.assertGreaterEqual(len(observability.filter_metric_names()), 16)
        exprs = [e for _, _, e in observability.dashboard_queries()]
        exprs += [r["expr"] for g in self.rules["groups"] for r in g["rules"]]
        for expr in exprs:
            for name in observability.metric_names(expr):
                with self.subTest(metric=name):
                    self.assertTrue(name in known or name.startswith("envoy_cluster_"), f"{name} in {expr}")

    def test_prometheus_config_passes_promtool(self):
        # The rule file path is the one inside the image: point it at the repository's file.
        text = (self.OBS / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", str(self.OBS / "alerts.yml"))
        ok, out = run_promtool("check", "config", self.write("prometheus.yml", text))
        self.assertTrue(ok, out)


if __name__ == "__main__":
    unittest.main()
