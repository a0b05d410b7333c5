"""A standard-library-only app for Hearth's microVM end-to-end tests
(crates/hearth/tests/microvms.rs): what a test needs to see from inside
the microVM that hello-stdlib does not show.

Listens on 8080 and, to test `X-aws-proxy-port`, on 9090:

* `GET /state`: JSON with the hostname, the process id, the port and a
  per-process request counter (as hello-stdlib's `/state`).
* `GET /headers`: JSON of the request headers the app received
  (lower-case names, each with a list of values).
* `POST /upload`: reads the body (Content-Length or chunked) and answers
  JSON with its length and SHA-256, without keeping it.
* `GET /download?bytes=N`: streams N bytes of a fixed pattern (the bytes
  0..255 repeated), 64 KiB at a time.
* `GET /drip?secs=S&every=E`: a slow download, an 8-byte chunk every E
  seconds for S seconds (Content-Length known up front).
* `GET /ws`: a WebSocket (RFC 6455) echo. The app picks the `echo`
  subprotocol when offered; its first message is a JSON text frame of the
  handshake headers it received; then every text or binary message comes
  back as it was sent, pings get pongs, a close is answered and ends it.
"""
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PATTERN = bytes(range(256)) * 256  # 64 KiB

_lock = threading.Lock()
_count = 0


def next_count():
    global _count
    with _lock:
        _count += 1
        return _count


def read_exact(rfile, n):
    data = b""
    while len(data) < n:
        chunk = rfile.read(n - len(data))
        if not chunk:
            raise EOFError("connection closed mid-frame")
        data += chunk
    return data


def ws_read(rfile):
    """One frame: (opcode, payload). Fragments are not reassembled."""
    b0, b1 = read_exact(rfile, 2)
    opcode, n = b0 & 0x0F, b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", read_exact(rfile, 2))[0]
    elif n == 127:
        n = struct.unpack(">Q", read_exact(rfile, 8))[0]
    mask = read_exact(rfile, 4) if b1 & 0x80 else None
    data = read_exact(rfile, n)
    if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return opcode, data


def ws_write(wfile, opcode, data):
    n = len(data)
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack(">BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 127, n)
    wfile.write(head + data)
    wfile.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "probe/1"

    def answer(self, code, body, content_type="application/json"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def headers_seen(self):
        seen = {}
        for k, v in self.headers.items():
            seen.setdefault(k.lower(), []).append(v)
        return seen

    def do_GET(self):
        url = urlparse(self.path)
        port = self.server.server_address[1]
        if url.path == "/state":
            state = {"hostname": socket.gethostname(), "pid": os.getpid(),
                     "port": port, "requests": next_count()}
            self.answer(200, json.dumps(state))
        elif url.path == "/headers":
            self.answer(200, json.dumps({"port": port, "headers": self.headers_seen()}))
        elif url.path == "/download":
            n = int(parse_qs(url.query).get("bytes", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            while n > 0:
                chunk = PATTERN[:min(n, len(PATTERN))]
                self.wfile.write(chunk)
                n -= len(chunk)
        elif url.path == "/drip":
            # A slow download: an 8-byte chunk every `every` seconds for
            # `secs` seconds, the length known up front.
            q = parse_qs(url.query)
            every = max(1, int(q.get("every", ["1"])[0]))
            chunks = max(1, int(q.get("secs", ["0"])[0]) // every)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(chunks * 8))
            self.end_headers()
            for i in range(chunks):
                if i:
                    time.sleep(every)
                self.wfile.write(b"drip %02d\n" % (i % 100))
                self.wfile.flush()
        elif url.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            self.websocket()
        else:
            self.answer(404, json.dumps({"error": "not found", "path": self.path}))

    def do_POST(self):
        if urlparse(self.path).path != "/upload":
            self.answer(404, json.dumps({"error": "not found"}))
            return
        digest, total = hashlib.sha256(), 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 65536))
                    digest.update(chunk)
                    total += len(chunk)
                    left -= len(chunk)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                digest.update(chunk)
                total += len(chunk)
                left -= len(chunk)
        self.answer(200, json.dumps({"bytes": total, "sha256": digest.hexdigest()}))

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        offered = [p.strip() for v in self.headers.get_all("Sec-WebSocket-Protocol") or []
                   for p in v.split(",") if p.strip()]
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        if "echo" in offered:
            self.send_header("Sec-WebSocket-Protocol", "echo")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        ws_write(self.wfile, 0x1, json.dumps({"headers": self.headers_seen()}).encode())
        try:
            while True:
                opcode, data = ws_read(self.rfile)
                if opcode in (0x1, 0x2):
                    ws_write(self.wfile, opcode, data)
                elif opcode == 0x9:
                    ws_write(self.wfile, 0xA, data)
                elif opcode == 0x8:
                    ws_write(self.wfile, 0x8, data[:2])
                    return
        except (EOFError, OSError):
            return

    def log_message(self, fmt, *args):
        pass


def main():
    servers = [ThreadingHTTPServer(("0.0.0.0", p), Handler) for p in (8080, 9090)]
    for s in servers:
        s.daemon_threads = True
    threading.Thread(target=servers[1].serve_forever, daemon=True).start()
    print("probe: listening on 8080 and 9090", flush=True)
    servers[0].serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
