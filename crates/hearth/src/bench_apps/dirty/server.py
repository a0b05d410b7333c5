"""The app `hearth bench microvm` measures suspends and downloads with.

Standard library only; serves on PORT (default 8080):

* `GET /`: a greeting (text), like examples/hello-stdlib.
* `GET /dirty?mib=N`: allocates N MiB and writes every byte of it, then
  keeps it (replacing what an earlier call kept), so that N MiB of guest
  memory are dirty when the answer arrives. Answers JSON with the MiB kept.
* `GET /bytes?mib=N`: answers N MiB of bytes (Content-Length set), written
  from one 1 MiB buffer: what a download through the proxy costs.
"""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MIB = 1 << 20
CHUNK = b"\xa5" * MIB
MAX_MIB = 4096
HELD = []


def mib_arg(query):
    try:
        n = int(parse_qs(query).get("mib", ["0"])[0])
    except ValueError:
        return None
    return n if 0 <= n <= MAX_MIB else None


class Handler(BaseHTTPRequestHandler):
    server_version = "bench-dirty/1"

    def answer(self, code, body, content_type="text/plain; charset=utf-8"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/":
            self.answer(200, "Hello from Lambda MicroVMs!\n")
        elif url.path == "/dirty":
            n = mib_arg(url.query)
            if n is None:
                self.answer(400, f"mib must be 0..{MAX_MIB}\n")
                return
            HELD.clear()
            # Repetition writes every byte: every page of it is dirty.
            HELD.append(bytearray(b"\x5a") * (n * MIB))
            self.answer(200, json.dumps({"dirtiedMiB": n}) + "\n", "application/json")
        elif url.path == "/bytes":
            n = mib_arg(url.query)
            if n is None:
                self.answer(400, f"mib must be 0..{MAX_MIB}\n")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n * MIB))
            self.end_headers()
            for _ in range(n):
                self.wfile.write(CHUNK)
        else:
            self.answer(404, "not found\n")

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT") or 8080)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
