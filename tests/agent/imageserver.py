"""A loopback HTTP server for image downloads in tests, with a broken and a slow mode.

GET /files/<name>   the file, with Content-Length
GET /broken/<name>  announces the whole length, sends half, then closes the connection
GET /slow/<name>    the file in 64 KiB pieces, 50 ms apart
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(BaseHTTPRequestHandler):
    root: Path

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        mode, _, name = self.path.lstrip("/").partition("/")
        path = self.root / name
        if mode not in ("files", "broken", "slow") or not name or "/" in name or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode == "files":
            self.wfile.write(data)
        elif mode == "broken":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            for start in range(0, len(data), 64 * 1024):
                try:
                    self.wfile.write(data[start : start + 64 * 1024])
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.05)


class ImageServer:
    """Serves the files of `root` on 127.0.0.1 from a thread until `close()`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = type("Handler", (_Handler,), {"root": root})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str, mode: str = "files") -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/{mode}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
