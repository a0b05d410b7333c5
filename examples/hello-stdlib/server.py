"""A standard-library-only HTTP app for Hearth image builds.

Serves, on PORT (default 8080):

* `GET /`: a greeting (text).
* `GET /state`: JSON with the hostname, the process id and a counter this
  process increments on every request (state kept in memory, so it
  survives the image's snapshot and is per microVM afterwards).
* the lifecycle hooks Hearth calls on `hooks.port`
  (`POST /aws/lambda-microvms/runtime/v1/<hook>`):
  - `ready`: 503 for the first READY_DELAY_SECS seconds after the process
    started (0 when unset), then 200. A build with the ready hook enabled
    waits for the 200 before it snapshots.
  - `validate`: 200, or 500 when VALIDATE_FAIL=1 (the build then fails).
  - `run`, `resume`, `suspend`, `terminate`: 200.

Every hook call is printed on stdout, which the build log shows.
"""
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOOK_PREFIX = "/aws/lambda-microvms/runtime/v1/"
STARTED = time.monotonic()
READY_DELAY_SECS = float(os.environ.get("READY_DELAY_SECS") or 0)
VALIDATE_FAIL = os.environ.get("VALIDATE_FAIL") == "1"

_lock = threading.Lock()
_count = 0


def log(msg):
    print(f"hello-stdlib: {msg}", flush=True)


def next_count():
    global _count
    with _lock:
        _count += 1
        return _count


class Handler(BaseHTTPRequestHandler):
    server_version = "hello-stdlib/1"

    def answer(self, code, body, content_type="text/plain; charset=utf-8"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/":
            self.answer(200, "Hello from Lambda MicroVMs!\n")
        elif self.path == "/state":
            state = {
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "requests": next_count(),
                "uptimeSeconds": round(time.monotonic() - STARTED, 3),
            }
            self.answer(200, json.dumps(state) + "\n", "application/json")
        else:
            self.answer(404, "not found\n")

    def do_POST(self):
        # Read the body (the hooks send a small JSON document) before answering.
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if not self.path.startswith(HOOK_PREFIX):
            self.answer(404, "not found\n")
            return
        hook = self.path[len(HOOK_PREFIX):]
        if hook == "ready":
            left = READY_DELAY_SECS - (time.monotonic() - STARTED)
            if left > 0:
                log(f"ready hook: 503, warming up ({left:.1f} s left)")
                self.answer(503, f"warming up: {left:.1f} s left\n")
            else:
                log("ready hook: 200")
                self.answer(200, "ready\n")
        elif hook == "validate":
            if VALIDATE_FAIL:
                log("validate hook: 500 (VALIDATE_FAIL=1)")
                self.answer(500, "validation failed: VALIDATE_FAIL=1\n")
            else:
                log("validate hook: 200")
                self.answer(200, "valid\n")
        elif hook in ("run", "resume", "suspend", "terminate"):
            log(f"{hook} hook: 200")
            self.answer(200, "{}", "application/json")
        else:
            self.answer(404, f"no hook {hook}\n")

    def log_message(self, fmt, *args):
        # Hook calls are logged above; ordinary requests stay quiet.
        pass


def main():
    port = int(os.environ.get("PORT") or 8080)
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    log(f"listening on port {port} (READY_DELAY_SECS={READY_DELAY_SECS:g}, VALIDATE_FAIL={int(VALIDATE_FAIL)})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
