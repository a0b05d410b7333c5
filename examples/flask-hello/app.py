"""The Flask app of the Lambda MicroVMs announcement, as a Hearth image.

`/` answers a greeting. `/state` answers JSON with the hostname, the
process id and a counter that this process increments on every request:
the counter lives in the app's memory, so a microVM launched from the
image's snapshot starts from the value the snapshot captured, keeps
counting across requests, and each microVM counts on its own.
"""
import os
import socket
import threading
import time

from flask import Flask, jsonify

app = Flask(__name__)

_started_at = time.time()
_lock = threading.Lock()
_count = 0


def _next_count():
    global _count
    with _lock:
        _count += 1
        return _count


@app.get("/")
def hello():
    return "Hello from Lambda MicroVMs!\n", 200, {"Content-Type": "text/plain; charset=utf-8"}


@app.get("/state")
def state():
    return jsonify(
        hostname=socket.gethostname(),
        pid=os.getpid(),
        requests=_next_count(),
        uptimeSeconds=round(time.time() - _started_at, 3),
    )
