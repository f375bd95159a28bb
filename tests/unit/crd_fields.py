"""The fields we rely on in Gateway API, Envoy Gateway, kgateway and prometheus-operator kinds.

kubernetes-validate knows only core kinds, so these custom resources are checked
against field trees written from the projects' public API references (Gateway API
v1.4 standard channel; Envoy Gateway v1alpha1 ``ExtProc``, ``Backend``,
``ClientTrafficPolicy``, ``BackendTrafficPolicy``; kgateway v1alpha1
``GatewayExtension``, ``TrafficPolicy``, ``Backend``, ``BackendConfigPolicy``,
``ListenerPolicy``; prometheus-operator v1 ``PodMonitor``,
``PrometheusRule``). A tree lists the fields a manifest may use and marks the
required ones; a typo, a field in the wrong place, a missing required field or a
value outside an enum fails the check. Only the parts of each API the deploy
files use are written out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Required:
    """A field the API requires."""

    name: str


@dataclass(frozen=True)
class OneOf:
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Pattern:
    regex: str


def enum(*values: Any) -> OneOf:
    return OneOf(values)


# Gateway API's Duration and Envoy Gateway's attribute names, as their CRDs validate them.
DURATION = Pattern(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
NAME = Pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
HOSTNAME = Pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
EG_ATTRIBUTE = Pattern(
    r"^(connection\.|source\.|destination\.|request\.|response\.|upstream\.|xds\.route_)[a-z_1-9]*$"
)
PORT = Pattern(r"^[0-9]+$")

METADATA = {
    Required("name"): NAME,
    "namespace": str,
    "labels": {"*": str},
    "annotations": {"*": str},
}
TARGET_REF = {Required("group"): str, Required("kind"): str, Required("name"): NAME}
# A route rule by its name, or a Gateway listener by its name.
SECTION_TARGET_REF = {**TARGET_REF, "sectionName": NAME}
PARENT_REF = {"group": str, "kind": str, "namespace": str, Required("name"): NAME, "port": int}
BACKEND_REF = {
    "group": str,
    "kind": str,
    Required("name"): NAME,
    "namespace": str,
    "port": int,
    "weight": int,
}
PATH_MATCH = {"type": enum("Exact", "PathPrefix", "RegularExpression"), "value": str}
VALUE_MATCH = {
    "type": enum("Exact", "RegularExpression"),
    Required("name"): str,
    Required("value"): str,
}
HEADER_MODIFIER = {
    "set": [{Required("name"): str, Required("value"): str}],
    "add": [{Required("name"): str, Required("value"): str}],
    "remove": [str],
}

GATEWAY = {
    Required("gatewayClassName"): NAME,
    Required("listeners"): [
        {
            Required("name"): NAME,
            "hostname": str,
            Required("port"): int,
            Required("protocol"): enum("HTTP", "HTTPS"),
            "allowedRoutes": {"namespaces": {"from": enum("All", "Same", "Selector")}},
        }
    ],
}
HTTP_ROUTE = {
    "parentRefs": [PARENT_REF],
    "hostnames": [HOSTNAME],
    "rules": [
        {
            "name": NAME,
            "matches": [
                {"path": PATH_MATCH, "headers": [VALUE_MATCH], "queryParams": [VALUE_MATCH]}
            ],
            "filters": [
                {
                    Required("type"): enum(
                        "URLRewrite", "RequestHeaderModifier", "ResponseHeaderModifier"
                    ),
                    "urlRewrite": {"hostname": HOSTNAME},
                    "requestHeaderModifier": HEADER_MODIFIER,
                    "responseHeaderModifier": HEADER_MODIFIER,
                }
            ],
            "backendRefs": [BACKEND_REF],
            "timeouts": {"request": DURATION, "backendRequest": DURATION},
        }
    ],
}
BACKEND_TLS_POLICY = {
    Required("targetRefs"): [TARGET_REF],
    Required("validation"): {
        Required("hostname"): HOSTNAME,
        "wellKnownCACertificates": enum("System"),
        "caCertificateRefs": [TARGET_REF],
    },
}

EG_BODY = enum("Streamed", "Buffered", "BufferedPartial", "FullDuplexStreamed")
EG_CIRCUIT_BREAKER = {
    "maxConnections": int,
    "maxPendingRequests": int,
    "maxParallelRequests": int,
    "maxParallelRetries": int,
    "maxRequestsPerConnection": int,
}
# ClusterSettings (BackendTrafficPolicy, ExtProc backendSettings): the parts used here.
EG_CLUSTER_SETTINGS = {
    "circuitBreaker": EG_CIRCUIT_BREAKER,
    "connection": {"bufferLimit": PORT},
    "tcpKeepalive": {"idleTime": DURATION, "interval": DURATION, "probes": int},
}
EG_TRIGGER = enum(
    "5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
    "retriable-status-codes", "cancelled", "deadline-exceeded", "internal",
    "resource-exhausted", "unavailable",
)  # fmt: skip
ENVOY_EXTENSION_POLICY = {
    Required("targetRefs"): [TARGET_REF],
    "extProc": [
        {
            Required("backendRefs"): [BACKEND_REF],
            "messageTimeout": DURATION,
            "failOpen": bool,
            "processingMode": {
                "request": {"body": EG_BODY, "attributes": [EG_ATTRIBUTE]},
                "response": {"body": EG_BODY, "attributes": [EG_ATTRIBUTE]},
                "allowModeOverride": bool,
            },
            "metadata": {"accessibleNamespaces": [str], "writableNamespaces": [str]},
            "backendSettings": EG_CLUSTER_SETTINGS,
        }
    ],
}
BACKEND_TRAFFIC_POLICY = {
    Required("targetRefs"): [SECTION_TARGET_REF],
    **EG_CLUSTER_SETTINGS,
    "retry": {
        "numRetries": int,
        "retryOn": {"triggers": [EG_TRIGGER], "httpStatusCodes": [int]},
        "perRetry": {"timeout": DURATION, "backOff": {"baseInterval": DURATION}},
    },
}
CLIENT_TRAFFIC_POLICY = {
    Required("targetRefs"): [TARGET_REF],
    "headers": {"earlyRequestHeaders": HEADER_MODIFIER},
    "connection": {"bufferLimit": PORT},
}
EG_BACKEND = {
    Required("endpoints"): [
        {
            "fqdn": {Required("hostname"): HOSTNAME, Required("port"): int},
            "ip": {Required("address"): str, Required("port"): int},
        }
    ],
}

KG_MODE = enum("DEFAULT", "SEND", "SKIP")
KG_BODY = enum("NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED")
GATEWAY_EXTENSION = {
    "type": enum("ExtAuth", "ExtProc", "RateLimit", "JWT", "OAuth2"),
    "extProc": {
        Required("grpcService"): {
            Required("backendRef"): BACKEND_REF,
            "authority": str,
            "requestTimeout": DURATION,
        },
        "failOpen": bool,
        "messageTimeout": DURATION,
        "processingMode": {
            "requestHeaderMode": KG_MODE,
            "responseHeaderMode": KG_MODE,
            "requestBodyMode": KG_BODY,
            "responseBodyMode": KG_BODY,
            "requestTrailerMode": KG_MODE,
            "responseTrailerMode": KG_MODE,
        },
        "allowProcessingModeOverride": bool,
        "routeCacheAction": enum("FromResponse", "Clear", "Retain"),
    },
}
KG_RETRY_ON = enum(
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
    "envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal",
    "resource-exhausted", "unavailable",
)  # fmt: skip
TRAFFIC_POLICY = {
    "targetRefs": [SECTION_TARGET_REF],
    "extProc": {Required("extensionRef"): {Required("name"): NAME, "namespace": str}},
    "retry": {
        "retryOn": [KG_RETRY_ON],
        "attempts": int,
        "perTryTimeout": DURATION,
        "statusCodes": [int],
    },
}
LISTENER_POLICY = {
    "targetRefs": [TARGET_REF],
    "default": {
        "perConnectionBufferLimitBytes": int,
        "httpSettings": {"streamIdleTimeout": DURATION},
    },
}
KG_BACKEND = {
    "type": enum("AWS", "Static", "DynamicForwardProxy", "GCP"),
    "static": {Required("hosts"): [{Required("host"): str, Required("port"): int}]},
}
BACKEND_CONFIG_POLICY = {
    "targetRefs": [TARGET_REF],
    "perConnectionBufferLimitBytes": int,
    "circuitBreakers": {
        "maxConnections": int,
        "maxPendingRequests": int,
        "maxRequests": int,
        "maxRetries": int,
        "trackRemaining": bool,
    },
    "tcpKeepalive": {
        "keepAliveTime": DURATION,
        "keepAliveInterval": DURATION,
        "keepAliveProbes": int,
    },
    "tls": {
        "sni": str,
        "wellKnownCACertificates": enum("System"),
        "alpnProtocols": [str],
        "verifySubjectAltNames": [str],
    },
}

# prometheus-operator's RelabelConfig (a target's labels before the scrape).
RELABEL_ACTIONS = ("replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                   "lowercase", "uppercase", "keepequal", "dropequal",
                   "Replace", "Keep", "Drop", "HashMod", "LabelMap", "LabelDrop", "LabelKeep",
                   "Lowercase", "Uppercase", "KeepEqual", "DropEqual")  # fmt: skip
RELABEL_CONFIG = {
    "sourceLabels": [Pattern(r"^[a-zA-Z_][a-zA-Z0-9_]*$")],
    "separator": str,
    "targetLabel": str,
    "regex": str,
    "modulus": int,
    "replacement": str,
    "action": enum(*RELABEL_ACTIONS),
}
POD_MONITOR = {
    Required("selector"): {"matchLabels": {"*": str}},
    "namespaceSelector": {"any": bool, "matchNames": [str]},
    Required("podMetricsEndpoints"): [
        {
            "port": str,
            "path": str,
            "interval": DURATION,
            "scheme": enum("http", "https"),
            "relabelings": [RELABEL_CONFIG],
        }
    ],
}
PROMETHEUS_RULE = {
    Required("groups"): [
        {
            Required("name"): str,
            "interval": DURATION,
            Required("rules"): [
                {
                    "record": str,
                    "alert": str,
                    Required("expr"): str,
                    "for": DURATION,
                    "keep_firing_for": DURATION,
                    "labels": {"*": str},
                    "annotations": {"*": str},
                }
            ],
        }
    ],
}

SPECS: dict[tuple[str, str], Any] = {
    ("gateway.networking.k8s.io/v1", "Gateway"): GATEWAY,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTP_ROUTE,
    ("gateway.networking.k8s.io/v1", "BackendTLSPolicy"): BACKEND_TLS_POLICY,
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"): ENVOY_EXTENSION_POLICY,
    ("gateway.envoyproxy.io/v1alpha1", "ClientTrafficPolicy"): CLIENT_TRAFFIC_POLICY,
    ("gateway.envoyproxy.io/v1alpha1", "Backend"): EG_BACKEND,
    ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy"): BACKEND_TRAFFIC_POLICY,
    ("gateway.kgateway.dev/v1alpha1", "GatewayExtension"): GATEWAY_EXTENSION,
    ("gateway.kgateway.dev/v1alpha1", "TrafficPolicy"): TRAFFIC_POLICY,
    ("gateway.kgateway.dev/v1alpha1", "Backend"): KG_BACKEND,
    ("gateway.kgateway.dev/v1alpha1", "BackendConfigPolicy"): BACKEND_CONFIG_POLICY,
    ("gateway.kgateway.dev/v1alpha1", "ListenerPolicy"): LISTENER_POLICY,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}


def check(manifest: dict[str, Any]) -> list[str]:
    """Every problem of one custom resource against its field tree; empty when it fits."""
    key = (manifest.get("apiVersion", ""), manifest.get("kind", ""))
    if key not in SPECS:
        return [f"{key[1]} ({key[0]}): no field tree for this kind"]
    top = {
        Required("apiVersion"): str,
        Required("kind"): str,
        Required("metadata"): METADATA,
        Required("spec"): SPECS[key],
    }
    problems: list[str] = []
    _check(manifest, top, f"{key[1]}/{manifest.get('metadata', {}).get('name')}", problems)
    return problems


def _check(value: Any, schema: Any, path: str, problems: list[str]) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object")
            return
        fields = {k.name if isinstance(k, Required) else k: v for k, v in schema.items()}
        for key in schema:
            if isinstance(key, Required) and key.name not in value:
                problems.append(f"{path}.{key.name}: required field is missing")
        for name, item in value.items():
            if name in fields:
                _check(item, fields[name], f"{path}.{name}", problems)
            elif "*" in fields:
                _check(item, fields["*"], f"{path}.{name}", problems)
            else:
                problems.append(f"{path}.{name}: unknown field")
    elif isinstance(schema, list):
        if not isinstance(value, list) or not value:
            problems.append(f"{path}: expected a non-empty list")
            return
        for index, item in enumerate(value):
            _check(item, schema[0], f"{path}[{index}]", problems)
    elif isinstance(schema, OneOf):
        if value not in schema.values:
            problems.append(f"{path}: {value!r} is not one of {list(schema.values)}")
    elif isinstance(schema, Pattern):
        if not isinstance(value, str) or not re.match(schema.regex, value):
            problems.append(f"{path}: {value!r} does not match {schema.regex}")
    elif schema is int:
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{path}: expected an integer")
    elif not isinstance(value, schema):
        problems.append(f"{path}: expected {schema.__name__}")
