"""Which gateway route a request is on when a Gateway API controller built the Envoy route.

With the gateway's own bootstrap, Envoy has one catch-all listener and the
gateway picks its route from the request path (``RouteTable.resolve``). Under
Envoy Gateway or kgateway, HTTPRoutes define the Envoy routes, and the
controller names them; the gateway recognises those names so an HTTPRoute may
send any path (``/team-a/chat``) to any gateway route.

What the controllers send (ext_proc ``request_attributes``, asked for by the
``EnvoyExtensionPolicy`` in deploy/kubernetes/gateway-api/envoy-gateway):

- ``xds.route_metadata``: Envoy Gateway copies an HTTPRoute's kind, namespace,
  name and its ``gateway.envoyproxy.io/``-prefixed annotations (prefix removed)
  into the route's metadata under ``envoy-gateway.resources``. The annotation
  ``gateway.envoyproxy.io/aigw-route: <gateway route>`` names the route outright.
  Envoy sends metadata attributes in protobuf text form.
- ``xds.route_name``: Envoy Gateway names routes
  ``httproute/<namespace>/<HTTPRoute name>/rule/<i>/match/<j>/<hostname>``; an
  HTTPRoute named ``aigw-<route>`` or ``<route>`` names that gateway route. Any
  other route name equal to a gateway route's name (a hand-written bootstrap)
  counts too.

kgateway's ext_proc settings cannot ask for attributes, so under kgateway (and
whenever neither attribute names a known route) the path decides, as it does
with the gateway's own bootstrap.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import text_format

ROUTE_NAME_ATTRIBUTE = "xds.route_name"
ROUTE_METADATA_ATTRIBUTE = "xds.route_metadata"
# The HTTPRoute annotation (under Envoy Gateway's prefix) that names the gateway route.
ROUTE_ANNOTATION = "aigw-route"
ENVOY_GATEWAY_ANNOTATION_PREFIX = "gateway.envoyproxy.io/"
ENVOY_GATEWAY_METADATA = "envoy-gateway"
# HTTPRoutes rendered by `extproc render-gateway-api` are named after the gateway route.
HTTP_ROUTE_PREFIX = "aigw-"


def route_names(attributes: Any) -> Iterator[str]:
    """Gateway route names the controller's attributes point at, strongest first."""
    if not attributes:
        return
    for struct in attributes.values():
        metadata = struct.fields.get(ROUTE_METADATA_ATTRIBUTE)
        if metadata is not None and metadata.string_value:
            yield from _annotated(metadata.string_value)
        name = struct.fields.get(ROUTE_NAME_ATTRIBUTE)
        if name is not None and name.string_value:
            yield from _named(name.string_value)


def _annotated(text: str) -> Iterator[str]:
    metadata = base_pb2.Metadata()
    try:
        text_format.Parse(text, metadata)
    except text_format.ParseError:
        # Unparsable metadata says nothing about the route; the name or the path will.
        return
    resources = metadata.filter_metadata.get(ENVOY_GATEWAY_METADATA)
    if resources is None or "resources" not in resources.fields:
        return
    for resource in resources.fields["resources"].list_value.values:
        annotations = resource.struct_value.fields.get("annotations")
        if annotations is None:
            continue
        value = annotations.struct_value.fields.get(ROUTE_ANNOTATION)
        if value is not None and value.string_value:
            yield value.string_value


def _named(route_name: str) -> Iterator[str]:
    parts = route_name.split("/")
    if len(parts) >= 3 and parts[0] == "httproute":
        http_route = parts[2]
        if http_route.startswith(HTTP_ROUTE_PREFIX):
            yield http_route.removeprefix(HTTP_ROUTE_PREFIX)
        yield http_route
        return
    yield route_name
