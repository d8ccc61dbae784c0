"""`GET /v1/models` and `GET /v1/models/{id}`: the models this caller may use.

A model is listed once per model id, with the operations it serves for this
caller; an endpoint is left out when the guards refuse it for the caller's
effective data class (e.g. a tenant whose floor is pii-restricted sees only
in-VPC endpoints) or when the gateway cannot reach it (no credential).
`?operation=embeddings` lists only the models that serve embeddings.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import BadRequestError, NotFoundError, PolicyUnavailableError
from gateway.metadata import opa_input, resolve_metadata
from gateway.pipeline.context import REQUEST_ID
from gateway.state import AUTHENTICATOR, FORWARDER, POLICY, REGISTRY, SETTINGS
from translator.operations import OPERATIONS


async def _visible_models(request: web.Request) -> dict[str, dict[str, Any]]:
    app = request.app
    operation = request.query.get("operation")
    if operation is not None and operation not in OPERATIONS:
        raise BadRequestError(
            f"unknown operation {operation!r}; known: {', '.join(OPERATIONS)}",
            code="invalid_request",
        )
    identity = await app[AUTHENTICATOR].authenticate(request.headers)
    meta = resolve_metadata(identity, request.headers, {}, app[SETTINGS])
    policy = app.get(POLICY)
    if policy is None:
        raise PolicyUnavailableError("the policy client is not running")
    unavailable = app[FORWARDER].unavailable
    models: dict[str, dict[str, Any]] = {}
    for op in (operation,) if operation else OPERATIONS:
        refused = await policy.refused_endpoints(
            opa_input(
                identity,
                meta,
                operation=op,
                model=None,
                request_id=request[REQUEST_ID],
                path=request.path,
                stream=False,
            )
        )
        for name, endpoint in sorted(app[REGISTRY].endpoints.items()):
            if name in refused or name in unavailable or op not in endpoint.operations:
                continue
            model_id = endpoint.model or str(endpoint.options.get("deployment") or name)
            entry = models.setdefault(
                model_id,
                {
                    "id": model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": endpoint.type,
                    "operations": [],
                },
            )
            if op not in entry["operations"]:
                entry["operations"].append(op)
    return models


async def list_models(request: web.Request) -> web.Response:
    models = await _visible_models(request)
    return web.json_response({"object": "list", "data": list(models.values())})


async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model"]
    model = (await _visible_models(request)).get(model_id)
    if model is None:
        raise NotFoundError(
            f"the model '{model_id}' does not exist or you do not have access to it",
            code="model_not_found",
        )
    return web.json_response(model)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    # Model ids may contain slashes (meta-llama/Llama-3.1-70B-Instruct).
    app.router.add_get("/v1/models/{model:.+}", get_model)
