"""The web page's HTTP side: a Starlette app over :class:`~gateway.web.state.PageState` and the outbox.

Routes (GET and HEAD only; anything else is 404 or 405):

* ``/``: the page (static HTML, CSS and JavaScript that render the document);
* ``/api/state``: the document as JSON; ``/api/events``: server-sent events,
  one ``state`` event per new version of it;
* ``/images/<id>.png``: a delivered picture, as the ground wrote it;
  ``/images/<id>/thumb.png``: the same, scaled to fit :data:`THUMB_PX`;
* ``/healthz``: ``ok`` (open, for readiness checks).

Requests are parsed by uvicorn's h11 parser; this module only routes them.
Ids are matched as integers, so ``..`` or any other text never reaches the
file system, and :class:`~gateway.web.outbox.OutboxView` refuses files that
resolve outside the outbox. A query string longer than :data:`MAX_QUERY`
bytes gets 414. With a token, every route but ``/healthz`` needs it, as
``Authorization: Bearer``, as the ``satgw_token`` cookie, or once as
``?token=`` (which sets the cookie and redirects to the page).
"""

from __future__ import annotations

import asyncio
import io
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.transport.http_listen import bearer, token_matches
from gateway.web.state import PageState

STATIC = Path(__file__).resolve().parent / "static"
MAX_QUERY = 2048  #: bytes of query string accepted; the page itself never sends one
MAX_PATH = 1024
THUMB_PX = 360
THUMB_CACHE = 256  #: thumbnails kept in memory (a few tens of KB each)
EVENT_POLL_S = 0.2  #: how often an open event stream looks for a new version
KEEPALIVE_S = 15.0
COOKIE = "satgw_token"
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                                 b"connect-src 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class Guard:
    """ASGI middleware: request size limits, the token check, and security headers on every reply."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        if len(scope.get("query_string", b"")) > MAX_QUERY or len(scope.get("raw_path") or b"") > MAX_PATH:
            await PlainTextResponse("request URI too long\n", 414)(scope, receive, send_with_headers)
            return
        if self.token is not None and scope["path"] != "/healthz":
            request = Request(scope)
            given = request.query_params.get("token")
            if given is not None and token_matches(given, self.token):
                # Trade the token in the address for a cookie, so it does not stay in the address bar.
                reply = RedirectResponse("/", 303)
                reply.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
                await reply(scope, receive, send_with_headers)
                return
            if not (token_matches(bearer(request.headers.get("authorization")), self.token)
                    or token_matches(request.cookies.get(COOKIE), self.token)):
                await PlainTextResponse("a token is required: open the URL satgw web printed (with ?token=...)\n",
                                        401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)


class Thumbnails:
    """Scaled PNGs of outbox pictures, made on first request and kept in a small LRU cache."""

    def __init__(self, size: int = THUMB_PX, keep: int = THUMB_CACHE) -> None:
        self.size, self.keep = size, keep
        self._cache: OrderedDict[tuple[Path, int], bytes] = OrderedDict()

    def get(self, path: Path) -> bytes:
        """The thumbnail of the PNG at ``path`` (an outbox file, already checked)."""
        from PIL import Image

        key = (path, path.stat().st_mtime_ns)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((self.size, self.size))
            buf = io.BytesIO()
            im.save(buf, "PNG", optimize=False)
        data = self._cache[key] = buf.getvalue()
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return data


def create_app(state: PageState, token: str | None = None) -> ASGIApp:
    """The page's ASGI app; ``state`` is started and closed with the app's lifespan."""
    thumbs = Thumbnails()
    no_store = {"Cache-Control": "no-store"}

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=no_store)

    async def api_state(request: Request) -> Response:
        _, body = state.snapshot()
        return Response(body, media_type="application/json", headers=no_store)

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            sent, idle = -1, 0.0
            while not await request.is_disconnected():
                version, body = state.snapshot()
                if version != sent:
                    sent, idle = version, 0.0
                    yield b"event: state\ndata: " + body + b"\n\n"
                elif idle >= KEEPALIVE_S:
                    idle = 0.0
                    yield b": keep-alive\n\n"  # proxies close silent connections
                await asyncio.sleep(EVENT_POLL_S)
                idle += EVENT_POLL_S

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def image(request: Request) -> Response:
        path = state.outbox.file(request.path_params["mid"], "png")
        if path is None:
            return PlainTextResponse("no such picture in the outbox\n", 404)
        return FileResponse(path, media_type="image/png")

    async def thumb(request: Request) -> Response:
        path = state.outbox.file(request.path_params["mid"], "png")
        if path is None:
            return PlainTextResponse("no such picture in the outbox\n", 404)
        try:
            data = await run_in_threadpool(thumbs.get, path)
        except (OSError, ValueError) as e:
            return PlainTextResponse(f"cannot read picture {path.name}: {e}\n", 500)
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(state.start)
        try:
            yield
        finally:
            await run_in_threadpool(state.close)

    get = ["GET", "HEAD"]
    app = Starlette(routes=[
        Route("/", page, methods=get),
        Route("/api/state", api_state, methods=get),
        Route("/api/events", events, methods=["GET"]),
        Route("/images/{mid:int}.png", image, methods=get),
        Route("/images/{mid:int}/thumb.png", thumb, methods=get),
        Route("/healthz", healthz, methods=get),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], lifespan=lifespan)
    return Guard(app, token)
