"""JSON schemas (draft 2020-12) for the Istio kinds shipped in deploy/istio/.

Written for this project from the field lists of Istio's API reference (istio.io, "Wasm Plugin",
"Traffic Extension", "Envoy Filter", "Service Entry", "Destination Rule"; the istio/api protos of the
1.30 line, and the validation rules of its generated CRDs). They cover the fields these manifests may use,
with the documented enums, and refuse any other field (additionalProperties: false), so a misspelt or
misplaced field fails the test. Envoy configuration inside an EnvoyFilter patch is checked by Envoy
itself (test_deploy.py), not here.

targetRefs follow the policy attachment rules of the reference: kind and group of a documented pair
(Gateway and GatewayClass of gateway.networking.k8s.io; Service of the core group, which only waypoints
honour; ServiceEntry for WasmPlugin and TrafficExtension), no namespace (cross-namespace references are
refused), at most 16, and never together with a selector.
"""

STRING = {"type": "string"}
NONEMPTY = {"type": "string", "minLength": 1}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
DURATION = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(h|m|s|ms|us|ns)$"}
STRING_MAP = {"type": "object", "additionalProperties": STRING}


def obj(properties, required=()):
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def array(items, min_items=0):
    return {"type": "array", "items": items, "minItems": min_items}


def enum(*values):
    return {"type": "string", "enum": list(values)}


DNS_LABEL = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
METADATA = {
    "type": "object",
    "properties": {
        "name": DNS_LABEL,
        "namespace": DNS_LABEL,
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "required": ["name", "namespace"],
    "additionalProperties": False,
}

WORKLOAD_SELECTOR = obj({"matchLabels": {**STRING_MAP, "minProperties": 1}}, ["matchLabels"])
GROUP = {"type": "string", "maxLength": 253, "pattern": r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"}
KIND = {"type": "string", "minLength": 1, "maxLength": 63, "pattern": r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"}
GATEWAY_API = "gateway.networking.k8s.io"
# The (kind, groups) pairs a targetRef may name; an absent group is the core group ("").
TARGET_GATEWAY = ("Gateway", [GATEWAY_API])
TARGET_GATEWAY_CLASS = ("GatewayClass", [GATEWAY_API])
TARGET_SERVICE = ("Service", ["", "core"])
TARGET_SERVICE_ENTRY = ("ServiceEntry", ["networking.istio.io"])


def target_refs(*kinds):
    """targetRefs naming one of `kinds` ((kind, groups) pairs), in the policy's own namespace."""
    def attachment(kind, groups):
        rule = {"properties": {"kind": {"const": kind}, "group": {"enum": groups}}}
        return rule if "" in groups else {**rule, "required": ["group"]}

    ref = {
        **obj(
            {
                "group": GROUP,
                "kind": KIND,
                "name": {"type": "string", "minLength": 1, "maxLength": 253},
                # "cross namespace referencing is not currently supported"
                "namespace": {"type": "string", "maxLength": 0},
            },
            ["kind", "name"],
        ),
        "anyOf": [attachment(kind, groups) for kind, groups in kinds],
    }
    return {**array(ref, min_items=1), "maxItems": 16}


POLICY_TARGET_REFS = target_refs(TARGET_GATEWAY, TARGET_GATEWAY_CLASS, TARGET_SERVICE, TARGET_SERVICE_ENTRY)
ENVOY_FILTER_TARGET_REFS = target_refs(TARGET_GATEWAY, TARGET_GATEWAY_CLASS, TARGET_SERVICE)
# At most one of selector and targetRefs.
NOT_BOTH_SELECTOR_AND_TARGET_REFS = {"not": {"required": ["selector", "targetRefs"]}}
PORT_SELECTOR = obj({"number": {"type": "integer", "minimum": 1, "maximum": 65535}}, ["number"])
TRAFFIC_SELECTOR = obj(
    {
        "mode": enum("UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"),
        "ports": array(PORT_SELECTOR),
    }
)
FAIL_STRATEGY = enum("FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD")
PULL_POLICY = enum("UNSPECIFIED_POLICY", "IfNotPresent", "Always")
PLUGIN_TYPE = enum("UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK")
WASM_URL = {"type": "string", "pattern": r"^(oci|https?|file)://\S+$"}
SHA256 = {"type": "string", "pattern": r"^([a-f0-9]{64})?$"}
VM_CONFIG = obj(
    {
        "env": array(
            obj({"name": NONEMPTY, "value": STRING, "valueFrom": enum("INLINE", "HOST")}, ["name"])
        )
    }
)

WASM_PLUGIN_SPEC = {
    **obj(
        {
            "selector": WORKLOAD_SELECTOR,
            "targetRefs": POLICY_TARGET_REFS,
            "url": WASM_URL,
            "sha256": SHA256,
            "imagePullPolicy": PULL_POLICY,
            "imagePullSecret": NONEMPTY,
            "pluginConfig": {"type": "object"},
            "pluginName": NONEMPTY,
            "failStrategy": FAIL_STRATEGY,
            "phase": enum("UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"),
            "priority": INT,
            "vmConfig": VM_CONFIG,
            "match": array(TRAFFIC_SELECTOR),
            "type": PLUGIN_TYPE,
        },
        ["url"],
    ),
    **NOT_BOTH_SELECTOR_AND_TARGET_REFS,
}

TRAFFIC_EXTENSION_SPEC = {
    **obj(
        {
            "selector": WORKLOAD_SELECTOR,
            "targetRefs": POLICY_TARGET_REFS,
            "phase": enum("UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"),
            "priority": INT,
            "match": array(TRAFFIC_SELECTOR),
            "wasm": obj(
                {
                    "url": WASM_URL,
                    "sha256": SHA256,
                    "imagePullPolicy": PULL_POLICY,
                    "imagePullSecret": NONEMPTY,
                    "pluginConfig": {"type": "object"},
                    "pluginName": NONEMPTY,
                    "failStrategy": FAIL_STRATEGY,
                    "vmConfig": VM_CONFIG,
                    "type": PLUGIN_TYPE,
                },
                ["url"],
            ),
            "lua": obj({"inlineCode": NONEMPTY}, ["inlineCode"]),
        }
    ),
    # Exactly one of wasm or lua; at most one of selector or targetRefs.
    "oneOf": [{"required": ["wasm"]}, {"required": ["lua"]}],
    **NOT_BOTH_SELECTOR_AND_TARGET_REFS,
}

ENVOY_FILTER_SPEC = {
    **obj(
        {
            "workloadSelector": obj({"labels": STRING_MAP}),
            "targetRefs": ENVOY_FILTER_TARGET_REFS,
            "priority": INT,
            "configPatches": array(
                obj(
                    {
                        "applyTo": enum(
                            "LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER",
                            "ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER",
                            "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER",
                        ),
                        "match": obj(
                            {
                                "context": enum("ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY", "WAYPOINT"),
                                "proxy": obj({"proxyVersion": STRING, "metadata": STRING_MAP}),
                                "listener": obj(
                                    {
                                        "portNumber": INT,
                                        "portName": STRING,
                                        "name": STRING,
                                        "listenerFilter": STRING,
                                        "filterChain": obj(
                                            {
                                                "name": STRING,
                                                "sni": STRING,
                                                "transportProtocol": STRING,
                                                "applicationProtocols": STRING,
                                                "destinationPort": INT,
                                                "filter": obj(
                                                    {"name": NONEMPTY, "subFilter": obj({"name": NONEMPTY})}
                                                ),
                                            }
                                        ),
                                    }
                                ),
                                "routeConfiguration": {"type": "object"},
                                "cluster": obj(
                                    {"portNumber": INT, "service": STRING, "subset": STRING, "name": STRING}
                                ),
                                "waypoint": {"type": "object"},
                            }
                        ),
                        "patch": obj(
                            {
                                "operation": enum(
                                    "MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER",
                                    "INSERT_FIRST", "REPLACE",
                                ),
                                "value": {"type": "object"},
                                "filterClass": enum("UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"),
                            },
                            ["operation"],
                        ),
                    },
                    ["applyTo", "patch"],
                ),
                min_items=1,
            ),
        },
        ["configPatches"],
    ),
    "not": {"required": ["workloadSelector", "targetRefs"]},
}
# A `waypoint` match goes with context WAYPOINT, and context WAYPOINT needs one.
_WAYPOINT_CONTEXT = {"properties": {"context": {"const": "WAYPOINT"}}, "required": ["context"]}
ENVOY_FILTER_SPEC["properties"]["configPatches"]["items"]["properties"]["match"].update(
    {"if": {"required": ["waypoint"]}, "then": _WAYPOINT_CONTEXT, "else": {"not": _WAYPOINT_CONTEXT}}
)

SERVICE_ENTRY_SPEC = obj(
    {
        "hosts": array(NONEMPTY, min_items=1),
        "addresses": array(STRING),
        "ports": array(
            obj(
                {
                    "number": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "protocol": enum("HTTP", "HTTPS", "GRPC", "HTTP2", "MONGO", "TCP", "TLS"),
                    "name": NONEMPTY,
                    "targetPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                },
                ["number", "name"],
            )
        ),
        "location": enum("MESH_EXTERNAL", "MESH_INTERNAL"),
        "resolution": enum("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"),
        "endpoints": array({"type": "object"}),
        "workloadSelector": obj({"labels": STRING_MAP}),
        "exportTo": array(STRING),
        "subjectAltNames": array(STRING),
    },
    ["hosts"],
)

TLS_SETTINGS = obj(
    {
        "mode": enum("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"),
        "clientCertificate": STRING,
        "privateKey": STRING,
        "caCertificates": STRING,
        "credentialName": STRING,
        "subjectAltNames": array(STRING),
        "sni": STRING,
        "insecureSkipVerify": BOOL,
    }
)
TRAFFIC_POLICY_CORE = {
    "loadBalancer": obj({"simple": enum("UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST")}),
    "connectionPool": obj(
        {
            "tcp": obj(
                {
                    "maxConnections": INT,
                    "connectTimeout": DURATION,
                    "maxConnectionDuration": DURATION,
                    "idleTimeout": DURATION,
                }
            ),
            "http": obj(
                {
                    "http1MaxPendingRequests": INT,
                    "http2MaxRequests": INT,
                    "maxRequestsPerConnection": INT,
                    "maxRetries": INT,
                    "idleTimeout": DURATION,
                    "h2UpgradePolicy": enum("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"),
                    "useClientProtocol": BOOL,
                    "maxConcurrentStreams": INT,
                }
            ),
        }
    ),
    "outlierDetection": obj(
        {
            "splitExternalLocalOriginErrors": BOOL,
            "consecutiveLocalOriginFailures": INT,
            "consecutiveGatewayErrors": INT,
            "consecutive5xxErrors": INT,
            "interval": DURATION,
            "baseEjectionTime": DURATION,
            "maxEjectionPercent": {"type": "integer", "minimum": 0, "maximum": 100},
            "minHealthPercent": INT,
        }
    ),
    "tls": TLS_SETTINGS,
}
DESTINATION_RULE_SPEC = obj(
    {
        "host": NONEMPTY,
        "trafficPolicy": obj(
            {
                **TRAFFIC_POLICY_CORE,
                "portLevelSettings": array(
                    obj({"port": obj({"number": INT}, ["number"]), **TRAFFIC_POLICY_CORE}, ["port"])
                ),
            }
        ),
        "subsets": array({"type": "object"}),
        "exportTo": array(STRING),
        "workloadSelector": obj({"matchLabels": STRING_MAP}),
    },
    ["host"],
)


def resource(api_versions, kind, spec):
    return obj(
        {
            "apiVersion": enum(*api_versions),
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        ["apiVersion", "kind", "metadata", "spec"],
    )


SCHEMAS = {
    "WasmPlugin": resource(["extensions.istio.io/v1alpha1"], "WasmPlugin", WASM_PLUGIN_SPEC),
    "TrafficExtension": resource(["extensions.istio.io/v1alpha1"], "TrafficExtension", TRAFFIC_EXTENSION_SPEC),
    "EnvoyFilter": resource(["networking.istio.io/v1alpha3"], "EnvoyFilter", ENVOY_FILTER_SPEC),
    "ServiceEntry": resource(
        ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"],
        "ServiceEntry",
        SERVICE_ENTRY_SPEC,
    ),
    "DestinationRule": resource(
        ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"],
        "DestinationRule",
        DESTINATION_RULE_SPEC,
    ),
}
