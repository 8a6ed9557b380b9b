"""The web UI plugin: Flask on 127.0.0.1 serving ``ui/`` and the page's API ticket.

The page talks to the daemon's API directly over WebSocket; this server only
serves static files and ``/config.json``: the API address and a token derived
for the page's own origin (``lannode.core.api.origin_token``), which the daemon
accepts from that origin only. Requests whose Host is not this server's loopback
address are refused, so a DNS-rebinding page cannot read the ticket.

It must never bind anything but 127.0.0.1, and never hold the node's own token
in anything it sends to a browser.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, abort, jsonify, request, send_from_directory

from lannode.core.api import origin_token
from lannode.files import ui_root
from lannode.plugins.kit import PluginContext, start

log = logging.getLogger("lannode.webui")


def create_app(ctx: PluginContext, root: Path | None = None) -> Flask:
    root = root or ui_root()
    app = Flask(__name__, static_folder=None)
    api = urlsplit(ctx.api_url)
    csp = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        f"media-src 'self' blob:; connect-src 'self' ws://{api.netloc} http://{api.netloc}; frame-ancestors 'none'; base-uri 'none'"
    )

    @app.before_request
    def only_our_host() -> Any:
        port = request.environ.get("SERVER_PORT")
        if request.host not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            abort(421, description="this page is served on 127.0.0.1 only")
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = csp
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    @app.get("/config.json")
    def config() -> Any:
        origin = f"http://{request.host}"
        response = jsonify({"api_url": ctx.api_url, "token": origin_token(ctx.token, origin), "origin": origin})
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    def index() -> Any:
        return send_from_directory(root, "index.html")

    @app.get("/<path:name>")
    def static_file(name: str) -> Any:
        return send_from_directory(root, name)

    return app


def _listen(port: int) -> socket.socket:
    """Bind 127.0.0.1:port ourselves (werkzeug exits on a taken port instead of raising)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            sock.close()
            raise
        log.warning("port %d is taken; the web UI takes a free port instead", port)
        sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _make_server(app: Flask, port: int) -> Any:
    from werkzeug.serving import make_server

    sock = _listen(port)
    server = make_server("127.0.0.1", sock.getsockname()[1], app, threaded=True, fd=sock.fileno())
    sock.close()  # werkzeug holds its own duplicate of the descriptor
    return server


def main() -> int:
    ctx = start("lannode-webui")
    if ctx is None:
        return 2
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    wanted = int(ctx.config.get("port", 7480))
    server = _make_server(create_app(ctx), wanted)
    port = server.socket.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    registered = ctx.attach(url=url, origins=[f"http://127.0.0.1:{port}", f"http://localhost:{port}"], on_node_gone=server.shutdown)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0 if registered.is_set() else 3
