"""``make_app``: the gateway's routes, middlewares and lifecycle in one place."""

from __future__ import annotations

from aiohttp import web

from vllama import __version__
from vllama.gateway import (
    health,
    middleware,
    routes_info,
    routes_models,
    routes_ollama,
    routes_openai,
)
from vllama.gateway.keys import METRICS, SERVICES, Services
from vllama.gateway.metrics import Metrics
from vllama.gateway.targets import router_ctx


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": request.app[SERVICES].config.ollama_version,
                              "vllama": __version__})


ROUTES = (("GET", "/", root), ("GET", "/api/version", version))


def make_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[middleware.edges],
                          client_max_size=services.config.max_body_bytes,
                          handler_args={"max_field_size": 65536})
    app[SERVICES] = services
    app[METRICS] = Metrics()
    app.on_response_prepare.append(middleware.on_prepare)
    tables = (ROUTES, health.ROUTES, routes_info.ROUTES, routes_ollama.ROUTES,
              routes_openai.ROUTES, routes_models.ROUTES)
    for method, path, handler in (route for table in tables for route in table):
        if method == "GET":
            app.router.add_get(path, handler)  # answers HEAD too, as Ollama's routes do
        else:
            app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(router_ctx(services))
    return app
