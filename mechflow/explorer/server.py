"""The live prompt explorer's web app (Starlette), served by uvicorn on 127.0.0.1 only.

Routes: ``GET /`` the page; ``GET /assets/<file>`` its script and style (this package's, no CDN);
``GET /api/sets``; ``POST /api/activations`` {set, text, feature?}; ``POST /api/steer`` {set, text, feature, scale}.
A bad request (unknown set or feature, text over the model's length, a body that is not UTF-8 JSON) answers
``{"error": ...}`` with a 4xx status; the server keeps serving.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mechflow.explorer.live import LiveSession, RequestError
from mechflow.explorer.site import asset_text

__all__ = ["HOST", "make_app", "serve"]

#: the only interface the server listens on
HOST = "127.0.0.1"
_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
_SECURITY = {"Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'",
             "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"the request body is not UTF-8 (byte {e.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(f"the request body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def _error(e: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(e)}, status_code=e.status, headers=_SECURITY)


def make_app(session: LiveSession) -> Starlette:
    """The app over ``session``."""

    async def page(request: Request) -> Response:
        return HTMLResponse(asset_text("live.html"), headers=_SECURITY)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ("explorer.css", "explorer.js", "live.js"):
            return JSONResponse({"error": f"no asset {name!r}"}, status_code=404)
        return Response(asset_text(name), media_type=_TYPES[name.rsplit(".", 1)[1]], headers=_SECURITY)

    async def sets(request: Request) -> Response:
        return JSONResponse({"sets": session.describe()}, headers=_SECURITY)

    async def activations(request: Request) -> Response:
        try:
            body = await _body(request)
            return JSONResponse(session.activations(body.get("set"), body.get("text"), body.get("feature")), headers=_SECURITY)
        except RequestError as e:
            return _error(e)

    async def steer(request: Request) -> Response:
        try:
            body = await _body(request)
            return JSONResponse(session.steer(body.get("set"), body.get("text"), body.get("feature"), body.get("scale")),
                                headers=_SECURITY)
        except RequestError as e:
            return _error(e)

    return Starlette(routes=[Route("/", page), Route("/assets/{name}", asset), Route("/api/sets", sets),
                             Route("/api/activations", activations, methods=["POST"]),
                             Route("/api/steer", steer, methods=["POST"])])


def serve(session: LiveSession, port: int = 8765) -> None:
    """Serve ``session`` on http://127.0.0.1:``port`` until interrupted."""
    import uvicorn

    print(f"mechflow explore: http://{HOST}:{port}/ (Ctrl-C stops it)", flush=True)
    uvicorn.run(make_app(session), host=HOST, port=int(port), log_level="warning")
