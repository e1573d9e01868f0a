"""The dashboard's web server: a Starlette app served by uvicorn.

    GET  /                 the page (static/index.html, wall.js, wall.css)
    GET  /events           server-sent events: one JSON model per engine poll (every 0.5 s)
    GET  /api/status       the latest model, once (for scripts)
    GET  /api/find?q=KEY   every audited decision for a parcel id or barcode, oldest first
    POST /api/chute/N      {"state": "disabled" | "available"}: only with allow_control

One poller asks the engine for `status` and builds the model (`view.LineView`); each browser's
stream sends the whole model once, then per update only the chutes that changed since what
that browser was last sent, so 600 tiles cost a few hundred bytes a second when little moves,
and a slow browser skips to the latest model instead of queueing old ones.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sorter.audit.query import find
from sorter.core.codes import CHUTE_STATES, REASONS

from .engine_client import ControlError, ask
from .view import ALARMS, FillSource, LineView

log = logging.getLogger("dashboard")

STATIC = Path(str(resources.files("dashboard") / "static"))
FIND_LIMIT = 1000              # decisions returned by one search, at most


@dataclass
class Settings:
    engine: str = "tcp://127.0.0.1:5558"     # the engine's control endpoint
    audit_dir: str = "audit"
    allow_control: bool = False
    interval_s: float = 0.5                   # engine polls (and page updates) per second: 2
    timeout_s: float = 2.0


class Poller:
    """Asks the engine for `status` every interval (in a worker thread: the request blocks)
    and publishes the model; streams wait for the next one with `next(seq)`."""

    def __init__(self, settings: Settings, fill: FillSource | None = None):
        self.settings, self.fill = settings, fill
        self.view = LineView()
        self.model: dict | None = None
        self.seq = 0
        self.closed = False
        self._changed: asyncio.Condition | None = None

    async def run(self) -> None:
        self._changed = asyncio.Condition()
        while not self.closed:
            started = time.monotonic()
            status = await asyncio.to_thread(self._status)
            fill = None
            if self.fill is not None:
                try:
                    fill = self.fill()
                except Exception as e:          # noqa: BLE001 - a fill source never stops the page
                    log.warning("fill source failed: %s", e)
            try:
                model = self.view.update(status, time.time(), fill)
            except Exception:                   # noqa: BLE001 - an odd reply never stops the page
                log.exception("cannot show this status reply")
                model = self.view.update(None, time.time())
            async with self._changed:
                self.model, self.seq = model, self.seq + 1
                self._changed.notify_all()
            await asyncio.sleep(max(0.0, self.settings.interval_s - (time.monotonic() - started)))

    def _status(self) -> dict | None:
        try:
            reply = ask(self.settings.engine, {"cmd": "status"}, timeout_s=self.settings.timeout_s)
        except ControlError:
            return None
        return reply if reply.get("ok") else None

    async def next(self, seq: int, timeout_s: float = 5.0) -> tuple[int, dict | None]:
        """The first model after `seq` (waits for it, at most timeout_s)."""
        while self._changed is None:
            await asyncio.sleep(0.05)
        async with self._changed:
            if self.seq <= seq and not self.closed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout_s)
            return self.seq, self.model

    async def close(self) -> None:
        self.closed = True
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()


def _tile(c: dict) -> list:
    return [c["state"], c["since_emptied"], c["fill"], c["decisions"]]


def _message(model: dict, sent: dict, settings: Settings) -> dict:
    """What one browser gets for `model`, given what it was sent before (`sent`, updated):
    the layout (chute numbers and labels) when it changed, the chutes whose tile changed."""
    out = {k: model[k] for k in ("t", "engine", "line", "alarms")}
    chutes = model.get("chutes")
    if chutes is None:
        return out
    layout = [[c["chute"], c["label"]] for c in chutes]
    if layout != sent.get("layout"):
        sent.clear()
        sent["layout"] = layout
        out["layout"] = layout
        out["control"] = settings.allow_control
    tiles = sent.setdefault("tiles", {})
    changed = []
    for c in chutes:
        tile = _tile(c)
        if tiles.get(c["chute"]) != tile:
            tiles[c["chute"]] = tile
            changed.append([c["chute"], *tile])
    out["chutes"] = changed
    return out


def create_app(settings: Settings, fill: FillSource | None = None) -> Starlette:
    poller = Poller(settings, fill)

    async def index(request: Request):
        return FileResponse(STATIC / "index.html")

    async def events(request: Request):
        async def stream():
            sent: dict = {}
            seq = 0
            yield "retry: 1000\n\n"
            while not poller.closed:
                seq, model = await poller.next(seq)
                if model is None:
                    yield ": waiting for the engine\n\n"
                    continue
                yield f"data: {json.dumps(_message(model, sent, settings))}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def status(request: Request):
        return JSONResponse({"model": poller.model, "control": settings.allow_control,
                             "reasons": REASONS, "alarms": [n for n, _ in ALARMS]})

    async def search(request: Request):
        key = request.query_params.get("q", "").strip()
        if not key:
            return JSONResponse({"error": "give a parcel id or a barcode (?q=...)"}, 400)
        try:
            rows = await asyncio.to_thread(find, settings.audit_dir, key)
        except Exception as e:                 # noqa: BLE001 - a bad audit file is reported
            return JSONResponse({"key": key, "error": f"audit search failed: {e}"}, 500)
        return JSONResponse({"key": key, "count": len(rows), "truncated": len(rows) > FIND_LIMIT,
                             "decisions": json.loads(json.dumps(rows[-FIND_LIMIT:], default=str))})

    async def set_chute(request: Request):
        if not settings.allow_control:
            return JSONResponse({"ok": False, "error": "read-only dashboard: start it with "
                                 "--allow-control to enable or disable chutes"}, 403)
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return JSONResponse({"ok": False, "error": "send JSON"}, 415)
        try:
            body = await request.json()
            chute, state = int(request.path_params["chute"]), body["state"]
        except (ValueError, KeyError, TypeError) as e:
            return JSONResponse({"ok": False, "error": f"bad request: {e}"}, 400)
        if state not in CHUTE_STATES:
            return JSONResponse({"ok": False, "error": f"state must be one of "
                                 f"{', '.join(CHUTE_STATES)}"}, 400)
        try:
            reply = await asyncio.to_thread(ask, settings.engine, {"cmd": "set_chute",
                                                                    "chute": chute,
                                                                    "state": state},
                                            timeout_s=settings.timeout_s)
        except ControlError as e:
            return JSONResponse({"ok": False, "error": str(e)}, 504)
        log.info("chute %s set %s from the dashboard", chute, state)
        return JSONResponse(reply, 200 if reply.get("ok") else 400)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(poller.run())
        try:
            yield
        finally:
            await poller.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = Starlette(routes=[
        Route("/", index),
        Route("/events", events),
        Route("/api/status", status),
        Route("/api/find", search),
        Route("/api/chute/{chute:int}", set_chute, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], lifespan=lifespan)
    app.state.poller = poller
    return app


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on HOST:PORT (port 0: a free one)."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class DashboardServer:
    """The app under uvicorn on a socket bound at construction (so `url` is known at once):
    `run()` in this thread until Ctrl-C, or `start()` in a thread and `stop()`."""

    def __init__(self, settings: Settings, listen: str = "127.0.0.1:8080",
                 fill: FillSource | None = None):
        import uvicorn

        self.settings = settings
        self.sock = bind(listen)
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        self.app = create_app(settings, fill)
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1,
            timeout_keep_alive=5))
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def start(self) -> "DashboardServer":
        self._thread = threading.Thread(target=self.run, name="dashboard", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
