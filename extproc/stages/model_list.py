"""``GET /v1/models``: answered by the gateway from the config, without going upstream.

Runs after authentication, so the list holds only the models the caller may use.
"""

from __future__ import annotations

import orjson

from extproc.config.model import RouteApi
from extproc.context import PhaseOutput, RequestContext


class ModelListStage:
    def request_headers(self, ctx: RequestContext, out: PhaseOutput) -> None:
        route = ctx.route
        if route is None or route.api is not RouteApi.OPENAI_MODELS:
            return
        access = ctx.runtime.access
        created = int(ctx.started_wall)
        models = [
            {"id": name, "object": "model", "created": created, "owned_by": "aigw"}
            for name in ctx.runtime.model_names
            if access.denial(ctx.identity, name, None) is None
        ]
        body = orjson.dumps({"object": "list", "data": models})
        out.answer = (200, body, {"content-type": "application/json"})
