"""JSON schemas (draft 2020-12) for the Gateway API and Envoy Gateway kinds shipped in deploy/.

Written for this project from the Gateway API reference (gateway.networking.k8s.io/v1: Gateway,
HTTPRoute) and Envoy Gateway's API reference and CRDs (gateway.envoyproxy.io/v1alpha1:
EnvoyExtensionPolicy with its Wasm extension, EnvoyPatchPolicy, EnvoyProxy). Like istio_schemas.py they
cover the fields these manifests may use, with the documented enums and the CRDs' validation rules
(which kinds a policy may target, which code source goes with which type), and refuse any other field, so
a misspelt or misplaced field fails the test. Envoy configuration inside an EnvoyPatchPolicy is checked
by Envoy itself (test_deploy.py), not here.
"""

from istio_schemas import (
    BOOL, GATEWAY_API, GROUP, INT, KIND, METADATA, NONEMPTY, STRING, STRING_MAP, array, enum, obj,
)

NAME = {"type": "string", "minLength": 1, "maxLength": 253}
SECTION_NAME = {
    "type": "string", "minLength": 1, "maxLength": 253,
    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
}
NAMESPACE = {"type": "string", "minLength": 1, "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
HOSTNAME = {
    "type": "string", "minLength": 1, "maxLength": 253,
    "pattern": r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
}
GW_DURATION = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}
SHA256_HEX = {"type": "string", "pattern": r"^[a-f0-9]{64}$"}

# Gateway API (gateway.networking.k8s.io/v1).
PARENT_REF = obj(
    {"group": GROUP, "kind": KIND, "namespace": NAMESPACE, "name": NAME, "sectionName": SECTION_NAME, "port": PORT},
    ["name"],
)
SECRET_REF = obj({"group": GROUP, "kind": KIND, "name": NAME, "namespace": NAMESPACE}, ["name"])
LISTENER = obj(
    {
        "name": SECTION_NAME,
        "hostname": HOSTNAME,
        "port": PORT,
        # A core protocol (HTTP, HTTPS, TLS, TCP, UDP) or an implementation's (Istio's HBONE), or a
        # domain-prefixed one.
        "protocol": {
            "type": "string", "minLength": 1, "maxLength": 255,
            "pattern": r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9]+$",
        },
        "tls": obj(
            {
                "mode": enum("Terminate", "Passthrough"),
                "certificateRefs": {**array(SECRET_REF), "maxItems": 64},
                "options": STRING_MAP,
            }
        ),
        "allowedRoutes": obj(
            {
                "namespaces": obj(
                    {"from": enum("All", "Selector", "Same"), "selector": obj({"matchLabels": STRING_MAP})}
                ),
                "kinds": array(obj({"group": GROUP, "kind": KIND}, ["kind"])),
            }
        ),
    },
    ["name", "port", "protocol"],
)
GATEWAY_SPEC = obj(
    {
        "gatewayClassName": NAME,
        "listeners": {**array(LISTENER, min_items=1), "maxItems": 64},
        "addresses": array(obj({"type": STRING, "value": NONEMPTY}, ["value"])),
        "infrastructure": obj(
            {
                "labels": STRING_MAP,
                "annotations": STRING_MAP,
                "parametersRef": obj({"group": GROUP, "kind": KIND, "name": NAME}, ["group", "kind", "name"]),
            }
        ),
    },
    ["gatewayClassName", "listeners"],
)

HTTP_HEADER_MATCH = obj(
    {"type": enum("Exact", "RegularExpression"), "name": NONEMPTY, "value": STRING}, ["name", "value"]
)
HTTP_ROUTE_MATCH = obj(
    {
        "path": obj({"type": enum("Exact", "PathPrefix", "RegularExpression"), "value": STRING}),
        "headers": {**array(HTTP_HEADER_MATCH), "maxItems": 16},
        "queryParams": {**array(HTTP_HEADER_MATCH), "maxItems": 16},
        "method": enum("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"),
    }
)
BACKEND_REF = obj(
    {
        "group": GROUP, "kind": KIND, "name": NAME, "namespace": NAMESPACE, "port": PORT,
        "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
    },
    ["name"],
)
HTTP_ROUTE_SPEC = obj(
    {
        "parentRefs": {**array(PARENT_REF), "maxItems": 32},
        "hostnames": {**array(HOSTNAME), "maxItems": 16},
        "rules": {
            **array(
                obj(
                    {
                        "name": SECTION_NAME,
                        "matches": {**array(HTTP_ROUTE_MATCH), "maxItems": 64},
                        "backendRefs": array(BACKEND_REF),
                        "timeouts": obj({"request": GW_DURATION, "backendRequest": GW_DURATION}),
                    }
                )
            ),
            "maxItems": 16,
        },
    }
)

# Envoy Gateway (gateway.envoyproxy.io/v1alpha1).
EG_POLICY_KINDS = ("Gateway", "ListenerSet", "HTTPRoute", "GRPCRoute", "TCPRoute", "UDPRoute", "TLSRoute")
EG_TARGET_REF = obj(
    {"group": {"const": GATEWAY_API}, "kind": enum(*EG_POLICY_KINDS), "name": NAME, "sectionName": SECTION_NAME},
    ["group", "kind", "name"],
)
CODE_TLS = obj({"caCertificateRef": SECRET_REF}, ["caCertificateRef"])
WASM_CODE = {
    **obj(
        {
            "type": enum("HTTP", "Image"),
            "http": obj(
                {"url": {"type": "string", "pattern": r"^https?://\S+$"}, "sha256": SHA256_HEX, "tls": CODE_TLS},
                ["url"],
            ),
            "image": obj(
                {
                    # registry/image:tag or registry/image@sha256:digest, no scheme.
                    "url": {"type": "string", "pattern": r"^[^:/\s]+(:[0-9]+)?/[^\s]+$"},
                    "sha256": SHA256_HEX,
                    "pullSecretRef": {**SECRET_REF, "properties": {**SECRET_REF["properties"], "kind": {"const": "Secret"}}},
                    "tls": CODE_TLS,
                },
                ["url"],
            ),
            "pullPolicy": enum("IfNotPresent", "Always"),
        },
        ["type"],
    ),
    # The source named by `type`, and only that one.
    "oneOf": [
        {"properties": {"type": {"const": "HTTP"}}, "required": ["http"], "not": {"required": ["image"]}},
        {"properties": {"type": {"const": "Image"}}, "required": ["image"], "not": {"required": ["http"]}},
    ],
}
WASM = obj(
    {
        "name": NONEMPTY,
        "rootID": NONEMPTY,
        "code": WASM_CODE,
        "config": {"type": "object"},
        "failOpen": BOOL,
        "env": obj({"hostKeys": array(NONEMPTY)}),
    },
    ["code"],
)
ENVOY_EXTENSION_POLICY_SPEC = {
    **obj(
        {
            "targetRef": EG_TARGET_REF,
            "targetRefs": array(EG_TARGET_REF, min_items=1),
            "wasm": {**array(WASM, min_items=1), "maxItems": 16},
        }
    ),
    # "either targetRef or targetRefs must be used"
    "oneOf": [{"required": ["targetRef"]}, {"required": ["targetRefs"]}],
}

ENVOY_PATCH_POLICY_SPEC = obj(
    {
        "type": enum("JSONPatch"),
        "targetRef": obj({"group": {"const": GATEWAY_API}, "kind": enum("Gateway", "GatewayClass"), "name": NAME},
                         ["group", "kind", "name"]),
        "priority": INT,
        "jsonPatches": array(
            obj(
                {
                    "type": enum(
                        "type.googleapis.com/envoy.config.listener.v3.Listener",
                        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                    ),
                    "name": NONEMPTY,
                    "operation": obj(
                        {
                            "op": enum("add", "remove", "replace", "move", "copy", "test"),
                            "path": STRING,
                            "jsonPath": STRING,
                            "from": STRING,
                            "value": {},
                        },
                        ["op"],
                    ),
                },
                ["type", "name", "operation"],
            ),
            min_items=1,
        ),
    },
    ["type", "targetRef"],
)

# A Kubernetes EnvVar: a value or a reference to a Secret or ConfigMap key.
KEY_REF = obj({"name": NAME, "key": NONEMPTY, "optional": BOOL}, ["key"])
ENV_VAR = obj(
    {"name": NONEMPTY, "value": STRING, "valueFrom": obj({"secretKeyRef": KEY_REF, "configMapKeyRef": KEY_REF})},
    ["name"],
)
ENVOY_PROXY_SPEC = obj(
    {
        "provider": obj(
            {
                "type": enum("Kubernetes", "Host"),
                "kubernetes": obj(
                    {
                        "envoyDeployment": obj(
                            {
                                "replicas": {"type": "integer", "minimum": 0},
                                "container": obj({"env": array(ENV_VAR), "image": NONEMPTY}),
                            }
                        ),
                    }
                ),
            },
            ["type"],
        ),
    }
)


def resource(api_version, kind, spec):
    return obj(
        {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": METADATA, "spec": spec},
        ["apiVersion", "kind", "metadata", "spec"],
    )


EG = "gateway.envoyproxy.io/v1alpha1"
SCHEMAS = {
    "Gateway": resource(f"{GATEWAY_API}/v1", "Gateway", GATEWAY_SPEC),
    "HTTPRoute": resource(f"{GATEWAY_API}/v1", "HTTPRoute", HTTP_ROUTE_SPEC),
    "EnvoyExtensionPolicy": resource(EG, "EnvoyExtensionPolicy", ENVOY_EXTENSION_POLICY_SPEC),
    "EnvoyPatchPolicy": resource(EG, "EnvoyPatchPolicy", ENVOY_PATCH_POLICY_SPEC),
    "EnvoyProxy": resource(EG, "EnvoyProxy", ENVOY_PROXY_SPEC),
}
