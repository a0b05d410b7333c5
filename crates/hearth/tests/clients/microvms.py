"""Running microVMs against a live `hearth serve` (run by microvms.rs).

Usage: microvms.py SCENARIO [key=value ...]

Each scenario drives the API (boto3, or the aws CLI where it says so) and
the endpoint proxy (Python `requests` through HTTPS_PROXY with
REQUESTS_CA_BUNDLE, curl, or a WebSocket client written here), checks what
a client can see (states, reasons, error codes, what the app answers) and
prints, as its last line, `RESULT {json}` with what the Rust side needs for
what only it can see (the server's files and processes, a SIGKILL and a
restart). Code artifacts are zips this script writes into ARTIFACT_DIR
(the server's --artifact-root) from examples/hello-stdlib or from the test
apps in APPS_DIR.

Environment: HEARTH_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, ARTIFACT_DIR, EXAMPLES_DIR, APPS_DIR, PROXY_ADDR
(host:port of the proxy), PROXY_CA (its CA file), HTTPS_PROXY and
REQUESTS_CA_BUNDLE (for `requests`), ENGINE_DIR (<data>/engine), AWS_CLI,
CREDENTIALS_FILE, SERVE_PID.
"""
import base64
import hashlib
import json
import os
import random
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import zipfile

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

E = os.environ["HEARTH_ENDPOINT"]
REGION = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
ARTIFACTS = os.environ["ARTIFACT_DIR"]
EXAMPLES = os.environ["EXAMPLES_DIR"]
APPS = os.environ["APPS_DIR"]
PROXY_ADDR = os.environ["PROXY_ADDR"]
PROXY_CA = os.environ["PROXY_CA"]
ENGINE_DIR = os.environ["ENGINE_DIR"]
BASE_ARN = f"arn:aws:lambda:{REGION}:aws:microvm-image:debian-12-python"
ROLE = "arn:aws:iam::123456789012:role/hearth-build"

client = boto3.client("lambda-microvms", endpoint_url=E, region_name=REGION,
                      config=Config(retries={"max_attempts": 1}, read_timeout=300))
T0 = time.monotonic()


def say(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def emit(**result):
    print("RESULT " + json.dumps(result), flush=True)


def error_of(call, **kw):
    """Call and expect a ClientError: (code, message, HTTP status)."""
    try:
        out = call(**kw)
    except ClientError as e:
        err = e.response["Error"]
        return err["Code"], err.get("Message", ""), e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"expected an error, got {out}")


def client_for(access_key_id, secret):
    return boto3.client("lambda-microvms", endpoint_url=E, region_name=REGION,
                        aws_access_key_id=access_key_id, aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1}))


# --- images -------------------------------------------------------------------

def app_zip(app, zip_name):
    """Zip `hello-stdlib` (from EXAMPLES_DIR) or a test app (from APPS_DIR)
    into ARTIFACT_DIR; return its file:// URI."""
    root = os.path.join(EXAMPLES if app == "hello-stdlib" else APPS, app)
    path = os.path.join(ARTIFACTS, zip_name + ".zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for f in sorted(filenames):
                full = os.path.join(dirpath, f)
                info = zipfile.ZipInfo(os.path.relpath(full, root), date_time=(2025, 1, 1, 0, 0, 0))
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(full, "rb") as fh:
                    zf.writestr(info, fh.read())
    return "file://" + path


def build_image(name, app, timeout_secs=300):
    """Create an image from `app` and wait until it is CREATED; its ARN."""
    r = client.create_microvm_image(name=name, baseImageArn=BASE_ARN, buildRoleArn=ROLE,
                                    codeArtifact={"uri": app_zip(app, name)})
    arn = r["imageArn"]
    say(f"building {name} ({app}): {arn}")
    deadline = time.monotonic() + timeout_secs
    while True:
        img = client.get_microvm_image(imageIdentifier=arn)
        if img["state"] == "CREATED":
            break
        check(img["state"] == "CREATING", f"the build of {name} failed: {img}")
        check(time.monotonic() < deadline, f"{name} still {img['state']} after {timeout_secs} s")
        time.sleep(1)
    say(f"{name} CREATED")
    return arn


# --- microVMs -----------------------------------------------------------------

def run(arn, c=None, **kw):
    c = c or client
    t = time.monotonic()
    m = c.run_microvm(imageIdentifier=arn, **kw)
    check(m["state"] == "RUNNING", f"RunMicrovm answers a RUNNING microVM: {m}")
    check(m["endpoint"].startswith(m["microvmId"] + "."), f"the endpoint names the microVM: {m}")
    say(f"ran {m['microvmId']} in {time.monotonic() - t:.1f} s ({m['endpoint']})")
    return m


def state_of(mid, c=None):
    return (c or client).get_microvm(microvmIdentifier=mid)


def wait_state(mid, want, timeout_secs, c=None):
    """Poll until the microVM is in state `want`; (GetMicrovm, seconds waited)."""
    t = time.monotonic()
    while True:
        m = state_of(mid, c)
        if m["state"] == want:
            return m, time.monotonic() - t
        check(time.monotonic() - t < timeout_secs,
              f"{mid} is still {m['state']} after {timeout_secs} s (waiting for {want}): {m}")
        time.sleep(0.5)


def token(mid, ports=({"port": 8080},), minutes=10, c=None):
    out = (c or client).create_microvm_auth_token(microvmIdentifier=mid, expirationInMinutes=minutes,
                                                  allowedPorts=list(ports))
    auth = out["authToken"]
    check(list(auth) == ["X-aws-proxy-auth"], f"the token comes as its header: {out}")
    return auth["X-aws-proxy-auth"]


def engine_files(mid):
    return os.path.join(ENGINE_DIR, "vms", mid)


# --- the data plane through `requests` (HTTPS_PROXY, REQUESTS_CA_BUNDLE) -----------

def url(m, path):
    return f"https://{m['endpoint']}{path}"


def get(m, path, tok=None, port=None, timeout=120, **kw):
    headers = dict(kw.pop("headers", {}))
    if tok is not None:
        headers["X-aws-proxy-auth"] = tok
    if port is not None:
        headers["X-aws-proxy-port"] = str(port)
    return requests.get(url(m, path), headers=headers, timeout=timeout, **kw)


def app_state(m, tok, timeout=120):
    r = get(m, "/state", tok, timeout=timeout)
    check(r.status_code == 200, f"GET /state of {m['microvmId']}: {r.status_code} {r.text}")
    return r.json()


def refused(r, status, words=(), secret=None):
    """A proxy refusal: `status`, a JSON body whose message has `words`,
    and never the token."""
    check(r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}")
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(f"a {status} from the proxy is JSON: {r.text!r}")
    msg = json.dumps(body)
    for w in words:
        check(w in msg, f"the {status} says {w!r}: {msg}")
    if secret:
        check(secret not in r.text, f"the refusal echoes the token: {r.text}")
    return body


# --- curl through the proxy (CONNECT) --------------------------------------------

def curl(m, path, tok, extra=()):
    """GET through `curl -x` (CONNECT) with the proxy's CA: (status, body)."""
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "120", "-x", f"http://{PROXY_ADDR}", "--cacert", PROXY_CA,
         "-H", f"X-aws-proxy-auth: {tok}", "-w", "\n%{http_code}", *extra, url(m, path)],
        capture_output=True, text=True)
    check(out.returncode == 0, f"curl failed ({out.returncode}): {out.stderr}")
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


# --- a WebSocket client (RFC 6455), through CONNECT and TLS -------------------------

class WebSocket:
    """Opens `wss://<endpoint><path>` through the proxy: CONNECT, TLS with the
    proxy's CA, then the opening handshake offering `protocols`. `status`,
    `headers` and (when not 101) `body` are the handshake's answer."""

    def __init__(self, m, protocols, path="/ws", timeout=60):
        host, port = m["endpoint"].rsplit(":", 1)
        ph, pp = PROXY_ADDR.rsplit(":", 1)
        raw = socket.create_connection((ph, int(pp)), timeout=timeout)
        raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        self.sock, self.buf = raw, b""
        head = self._head()
        check(head.split(b" ")[1] == b"200", f"CONNECT answered {head!r}")
        ctx = ssl.create_default_context(cafile=PROXY_CA)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: {', '.join(protocols)}\r\n\r\n")
        self.sock.sendall(req.encode())
        lines = self._head().decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.body = b""
        if self.status == 101:
            want = base64.b64encode(hashlib.sha1(
                (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            check(self.headers.get("sec-websocket-accept") == want, f"Sec-WebSocket-Accept (RFC 6455 4.2.2): {self.headers}")
        else:
            n = int(self.headers.get("content-length", "0"))
            self.body = self._exact(n)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the connection closed")
        self.buf += chunk

    def _head(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, data, opcode=None):
        if opcode is None:
            opcode = 0x1 if isinstance(data, str) else 0x2
        data = data.encode() if isinstance(data, str) else data
        n, mask = len(data), os.urandom(4)
        if n < 126:
            head = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self):
        """One frame: (opcode, payload)."""
        b0, b1 = self._exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._exact(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._exact(8))[0]
        check(not b1 & 0x80, "frames from the server are not masked")
        return b0 & 0x0F, self._exact(n)

    def close(self):
        self.send(struct.pack(">H", 1000), opcode=0x8)
        opcode, data = self.recv()
        check(opcode == 0x8, f"the close is answered with a close: {opcode} {data!r}")
        self.sock.close()


def ws_protocols(tok=None, port=None, app=("echo",)):
    p = ["lambda-microvms"]
    if tok:
        p.append(f"lambda-microvms.authentication.{tok}")
    if port:
        p.append(f"lambda-microvms.port.{port}")
    return p + list(app)


# --- the serve process's memory --------------------------------------------------

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# --- scenarios --------------------------------------------------------------------

def s_build(a):
    arn = build_image(a["name"], a.get("app", "hello-stdlib"))
    emit(imageArn=arn)


def s_reference_cli(a):
    """The announcement's walk-through with the real aws CLI and curl."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HTTPS_PROXY", "REQUESTS_CA_BUNDLE")}
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.environ["CREDENTIALS_FILE"]
    env["AWS_DEFAULT_REGION"] = "us-east-1"

    def aws(*args):
        cmd = [os.environ["AWS_CLI"], "--endpoint-url", E, "--output", "json", "lambda-microvms", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        check(out.returncode == 0, f"aws {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
        return json.loads(out.stdout) if out.stdout.strip() else {}

    name = a["name"]
    img = aws("create-microvm-image", "--name", name, "--base-image-arn", BASE_ARN,
              "--build-role-arn", ROLE, "--code-artifact", f"uri={app_zip('hello-stdlib', name)}")
    arn = img["imageArn"]
    say(f"aws create-microvm-image: {img['state']} {arn}")
    deadline = time.monotonic() + 300
    while aws("get-microvm-image", "--image-identifier", arn)["state"] != "CREATED":
        check(time.monotonic() < deadline, "the image never reached CREATED")
        time.sleep(2)
    say("image CREATED")

    m = aws("run-microvm", "--image-identifier", arn, "--idle-policy",
            "maxIdleDurationSeconds=900,suspendedDurationSeconds=300,autoResumeEnabled=true")
    mid = m["microvmId"]
    say(f"aws run-microvm: {mid} {m['state']} {m['endpoint']}")
    check(m["state"] == "RUNNING", m)
    check(m["idlePolicy"] == {"maxIdleDurationSeconds": 900, "suspendedDurationSeconds": 300,
                              "autoResumeEnabled": True}, f"idle policy as given: {m}")
    check(m["endpoint"] == f"{mid}.localhost:{PROXY_ADDR.rsplit(':', 1)[1]}", f"endpoint: {m['endpoint']}")
    check(os.path.isdir(engine_files(mid)), f"the microVM's files are at {engine_files(mid)}")
    got = aws("get-microvm", "--microvm-identifier", mid)
    check(got["state"] == "RUNNING" and got["imageArn"] == arn and got["imageVersion"] == "1", got)

    tok = aws("create-microvm-auth-token", "--microvm-identifier", mid, "--expiration-in-minutes", "10",
              "--allowed-ports", '[{"port": 8080}]')["authToken"]["X-aws-proxy-auth"]
    code, body = curl(m, "/state", tok)
    check(code == 200, f"curl /state: {code} {body}")
    first = json.loads(body)
    say(f"curl /state: {first}")
    code, body = curl(m, "/state", tok)
    second = json.loads(body)
    check(second["requests"] == first["requests"] + 1 and second["pid"] == first["pid"],
          f"the counter counts in one process: {first} then {second}")

    out = aws("suspend-microvm", "--microvm-identifier", mid)
    say(f"aws suspend-microvm: {out}")
    susp, waited = wait_state(mid, "SUSPENDED", 60)
    say(f"SUSPENDED after {waited:.1f} s more")
    check(aws("get-microvm", "--microvm-identifier", mid)["state"] == "SUSPENDED", "the CLI sees SUSPENDED")
    listed = aws("list-microvms")["items"]
    check([(i["microvmId"], i["state"]) for i in listed if i["microvmId"] == mid] == [(mid, "SUSPENDED")],
          f"listed SUSPENDED: {listed}")

    t = time.monotonic()
    code, body = curl(m, "/state", tok)
    check(code == 200, f"curl after the suspend: {code} {body}")
    third = json.loads(body)
    say(f"auto-resumed in {time.monotonic() - t:.1f} s: {third}")
    check(third["pid"] == first["pid"] and third["hostname"] == first["hostname"],
          f"the same process after the resume: {first} vs {third}")
    check(third["requests"] == second["requests"] + 1, f"memory intact: the counter continues: {second} then {third}")
    check(aws("get-microvm", "--microvm-identifier", mid)["state"] == "RUNNING", "RUNNING after the auto-resume")

    aws("terminate-microvm", "--microvm-identifier", mid)
    end, _ = wait_state(mid, "TERMINATED", 60)
    cli_end = aws("get-microvm", "--microvm-identifier", mid)
    say(f"aws get-microvm: {cli_end['state']} ({cli_end.get('stateReason')})")
    check(cli_end["state"] == "TERMINATED", cli_end)
    check("terminatedAt" in cli_end, f"a TERMINATED microVM has terminatedAt: {cli_end}")
    code, body = curl(m, "/state", tok)
    check(code in (404, 409), f"a terminated microVM answers nothing through the proxy: {code} {body}")
    emit(microvmId=mid, imageArn=arn)


def s_data_plane(a):
    """Python requests through HTTPS_PROXY: state, bodies both ways, what the
    app sees of the request, X-aws-proxy-port; and WebSocket echo."""
    check(os.environ.get("HTTPS_PROXY") and os.environ.get("REQUESTS_CA_BUNDLE"),
          "requests is configured by HTTPS_PROXY and REQUESTS_CA_BUNDLE only")
    arn = build_image(a["name"], "probe")
    m = run(arn, idlePolicy={"maxIdleDurationSeconds": 900, "suspendedDurationSeconds": 0,
                             "autoResumeEnabled": True})
    tok = token(m["microvmId"], ports=[{"port": 8080}, {"port": 9090}])

    s1 = app_state(m, tok)
    s2 = app_state(m, tok)
    say(f"/state: {s1} then {s2}")
    check(s2["requests"] == s1["requests"] + 1 and s2["pid"] == s1["pid"] and s1["port"] == 8080, (s1, s2))
    check(s1["hostname"] == m["microvmId"], f"the guest's hostname is its microVM id: {s1}")

    r = get(m, "/headers", tok, headers={"X-Custom": "kept", "X-aws-proxy-port": "8080"})
    check(r.status_code == 200, r.text)
    seen = r.json()["headers"]
    say(f"the app saw: {sorted(seen)}")
    check(seen.get("x-custom") == ["kept"], f"other headers reach the app: {seen}")
    check("x-aws-proxy-auth" not in seen and "x-aws-proxy-port" not in seen,
          f"the proxy's headers are stripped: {seen}")
    check(not any(tok in v for vs in seen.values() for v in vs), f"the token reaches the app: {seen}")
    check(seen.get("host") == [m["endpoint"]], f"Host is the endpoint: {seen.get('host')}")

    body = os.urandom(3 * 1024 * 1024)
    r = requests.post(url(m, "/upload"), data=body, headers={"X-aws-proxy-auth": tok}, timeout=120)
    check(r.status_code == 200, r.text)
    check(r.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()},
          f"3 MiB reach the app intact: {r.json()}")
    r = get(m, "/download?bytes=1000003", tok)
    check(r.status_code == 200 and len(r.content) == 1000003, f"download: {r.status_code} {len(r.content)}")
    check(r.content == (bytes(range(256)) * 4000)[:1000003], "the download arrives intact")

    r = get(m, "/state", tok, port=9090)
    check(r.status_code == 200 and r.json()["port"] == 9090, f"X-aws-proxy-port 9090 reaches the app's second port: {r.text}")
    r = get(m, "/headers", tok, port=9090)
    check("x-aws-proxy-port" not in r.json()["headers"], f"stripped on 9090 too: {r.text}")
    any_tok = token(m["microvmId"], ports=[{"allPorts": {}}])
    r = get(m, "/state", any_tok, port=9091)
    refused(r, 502, ["9091"], secret=any_tok)
    say(f"port 9091 (nothing listens): {r.status_code} {r.text.strip()}")

    # WebSocket: auth in the subprotocols, echo both ways.
    ws = WebSocket(m, ws_protocols(tok))
    check(ws.status == 101, f"the upgrade succeeds: {ws.status} {ws.body!r}")
    check(ws.headers.get("sec-websocket-protocol") == "echo", f"the app's subprotocol comes back: {ws.headers}")
    op, hello = ws.recv()
    handshake = json.loads(hello)["headers"]
    say(f"the app's handshake headers: {handshake}")
    offered = ",".join(handshake.get("sec-websocket-protocol", []))
    check("lambda-microvms" not in offered and tok not in json.dumps(handshake),
          f"the proxy's subprotocols are not forwarded: {handshake}")
    check("echo" in offered, f"the app's own subprotocol is: {handshake}")
    for msg in ("hello", "x" * 70000):
        ws.send(msg)
        check(ws.recv() == (0x1, msg.encode()), f"text echo of {len(msg)} bytes")
    ws.send(bytes(range(256)))
    check(ws.recv() == (0x2, bytes(range(256))), "binary echo")
    ws.send(b"ping!", opcode=0x9)
    check(ws.recv() == (0xA, b"ping!"), "a ping is answered with a pong")
    ws.close()

    ws = WebSocket(m, ws_protocols(tok, port=9090))
    check(ws.status == 101, f"lambda-microvms.port.9090 upgrades on port 9090: {ws.status} {ws.body!r}")
    ws.recv()
    ws.send("on 9090")
    check(ws.recv() == (0x1, b"on 9090"), "echo on 9090")
    ws.close()
    for what, protos, status in [
        ("no token", ws_protocols(), 403),
        ("a tampered token", ws_protocols(tok[:-3] + ("AAA" if tok[-3:] != "AAA" else "BBB")), 403),
        ("a port the token does not allow", ws_protocols(tok, port=7000), 403),
    ]:
        ws = WebSocket(m, protos)
        say(f"WebSocket with {what}: {ws.status} {ws.body!r}")
        check(ws.status == status, f"WebSocket with {what}: {ws.status} {ws.body!r}")
        check(tok.encode() not in ws.body, "the token is not echoed")
    emit(microvmId=m["microvmId"])


def tamper_claims(tok, **changes):
    """The token with its claims changed and its MAC kept."""
    prefix, payload, mac = tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{prefix}.{forged}.{mac}"


def s_token_setup(a):
    arn = build_image(a["name"], "probe")
    ma = run(arn)
    mb = run(arn)
    emit(imageArn=arn, a=ma["microvmId"], b=mb["microvmId"])


def s_token_scope(a):
    """Each way a token can be wrong: 403 (or 404 where the token is valid
    but names what this account does not have); the app is never reached."""
    ma, mb = state_of(a["a"]), state_of(a["b"])
    t8080 = token(ma["microvmId"])
    count = app_state(ma, t8080)["requests"]

    def cases():
        yield "missing token", get(ma, "/state"), 403, ["missing auth token"], None
        yield "malformed token", get(ma, "/state", "garbage"), 403, ["malformed"], None
        mac_flip = t8080[:-10] + ("A" if t8080[-10] != "A" else "B") + t8080[-9:]
        yield "token with a changed MAC", get(ma, "/state", mac_flip), 403, ["signature"], mac_flip
        wide = tamper_claims(t8080, ports=[[1, 65535]])
        yield "token widened to all ports", get(ma, "/state", wide, port=9090), 403, ["signature"], wide
        moved = tamper_claims(t8080, microvm_id=mb["microvmId"])
        yield "token moved to microVM B", get(mb, "/state", moved), 403, ["signature"], moved
        yield "A's token on B", get(mb, "/state", t8080), 403, ["not for microVM"], t8080
        yield "a port the token does not allow", get(ma, "/state", t8080, port=9090), 403, ["9090"], t8080
        yield "an expired token", get(ma, "/state", a["expired"]), 403, ["expired"], a["expired"]
        yield "a valid token of another account", get(ma, "/state", a["foreign"]), 404, ["not found"], a["foreign"]
        yield "a valid token for a microVM that does not exist", get(
            {"endpoint": a["ghost"] + "." + ma["endpoint"].split(".", 1)[1]}, "/state", a["ghost_token"]), \
            404, ["not found"], a["ghost_token"]
        yield "a shell token", get(ma, "/state", a["shell"]), 403, ["shell"], a["shell"]

    for what, r, status, words, secret in cases():
        say(f"{what}: {r.status_code} {r.text.strip()}")
        refused(r, status, words, secret)

    # Ranges and allPorts.
    ranged = token(ma["microvmId"], ports=[{"range": {"startPort": 9000, "endPort": 9100}}])
    r = get(ma, "/state", ranged, port=9090)
    check(r.status_code == 200 and r.json()["port"] == 9090, f"a range token opens 9090: {r.text}")
    refused(get(ma, "/state", ranged), 403, ["8080"], ranged)
    every = token(ma["microvmId"], ports=[{"allPorts": {}}])
    check(get(ma, "/state", every).status_code == 200, "allPorts opens 8080")
    check(get(ma, "/state", every, port=9090).status_code == 200, "allPorts opens 9090")
    refused(get(ma, "/state", every, port=9091), 502, ["9091"], every)

    # No refused request reached the app: its counter (one per process,
    # both ports) moved only for the three /state requests let through
    # above, and for this one.
    after = app_state(ma, t8080)["requests"]
    check(after == count + 4, f"refused requests never reached the app: {count} then {after}")

    # Bad token requests, past boto3's own checks: the server refuses them.
    raw = boto3.client("lambda-microvms", endpoint_url=E, region_name=REGION,
                       config=Config(retries={"max_attempts": 1}, parameter_validation=False))
    for what, kw in [("0 minutes", dict(expirationInMinutes=0, allowedPorts=[{"port": 8080}])),
                     ("61 minutes", dict(expirationInMinutes=61, allowedPorts=[{"port": 8080}])),
                     ("no ports", dict(expirationInMinutes=5, allowedPorts=[])),
                     ("port 0", dict(expirationInMinutes=5, allowedPorts=[{"port": 0}])),
                     ("a reversed range", dict(expirationInMinutes=5,
                                               allowedPorts=[{"range": {"startPort": 90, "endPort": 80}}]))]:
        code, msg, status = error_of(raw.create_microvm_auth_token, microvmIdentifier=ma["microvmId"], **kw)
        say(f"CreateMicrovmAuthToken with {what}: {status} {code}: {msg}")
        check(status == 400 and code == "ValidationException", f"{what}: {status} {code} {msg}")
    emit(ok=True)


def s_cross_account(a):
    """Account B against account A's microVM: 404 for every call, nothing
    listed, nothing changed."""
    b = client_for(a["b_key"], a["b_secret"])
    mid = a["a"]
    for op, kw in [("get_microvm", {}), ("suspend_microvm", {}), ("resume_microvm", {}),
                   ("terminate_microvm", {}),
                   ("create_microvm_auth_token", dict(expirationInMinutes=5, allowedPorts=[{"port": 8080}]))]:
        code, msg, status = error_of(getattr(b, op), microvmIdentifier=mid, **kw)
        say(f"B {op} on A's microVM: {status} {code}: {msg}")
        check(status == 404 and code == "ResourceNotFoundException", f"B {op}: {status} {code} {msg}")
    check(b.list_microvms()["items"] == [], "B lists no microVM")
    code, _, status = error_of(b.run_microvm, imageIdentifier=a["imageArn"])
    check(status == 404 and code == "ResourceNotFoundException", f"B cannot run A's image: {status} {code}")
    m = state_of(mid)
    check(m["state"] == "RUNNING", f"A's microVM is untouched: {m}")
    check(app_state(m, token(mid))["requests"] >= 1, "A's microVM still answers")
    emit(ok=True)


def s_lifecycle(a):
    """The idle policy's deadlines, each for real, overlapped to share the
    waiting: I idles to SUSPENDED (and a request resumes it); W gets
    WebSocket traffic only and stays RUNNING past the same idle limit; L
    serves one slow download past it and stays RUNNING too; R
    is terminated for its retention after an explicit suspend; D for its
    maximum duration; N has no auto-resume (409 until ResumeMicrovm).
    Invalid transitions are ConflictExceptions."""
    arn = a["imageArn"]
    idle = {"maxIdleDurationSeconds": 60, "suspendedDurationSeconds": 0, "autoResumeEnabled": True}

    w = run(arn, idlePolicy=idle)
    w_tok = token(w["microvmId"])
    ws = WebSocket(w, ws_protocols(w_tok))
    check(ws.status == 101, f"W's WebSocket: {ws.status} {ws.body!r}")
    ws.recv()
    ws_errors = []
    ws_stop = threading.Event()

    def chatter():
        try:
            n = 0
            while not ws_stop.wait(10):
                n += 1
                ws.send(f"keepalive {n}")
                check(ws.recv() == (0x1, f"keepalive {n}".encode()), "keepalive echo")
        except Exception as e:  # noqa: BLE001 (reported below)
            ws_errors.append(repr(e))

    chat = threading.Thread(target=chatter, daemon=True)
    chat.start()

    # L: one slow download (an 8-byte chunk every 5 s for 75 s) and nothing
    # inbound after its request: the response bytes keep L from idling
    # past its 60 s.
    l_vm = run(arn, idlePolicy=idle)
    l_tok = token(l_vm["microvmId"])
    drip = {}

    def slow_download():
        try:
            t0 = time.monotonic()
            r = get(l_vm, "/drip?secs=75&every=5", l_tok, timeout=60)
            drip.update(status=r.status_code, body=r.text, secs=time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 (reported below)
            drip.update(error=repr(e))

    dl = threading.Thread(target=slow_download, daemon=True)
    dl.start()

    i = run(arn, idlePolicy=idle)
    i_started = time.monotonic()
    i_tok = token(i["microvmId"])
    # No request to I before it suspends: its idle clock runs from RunMicrovm.

    # R: retention after an explicit suspend.
    r = run(arn, idlePolicy={"maxIdleDurationSeconds": 900, "suspendedDurationSeconds": 5,
                             "autoResumeEnabled": True})
    client.suspend_microvm(microvmIdentifier=r["microvmId"])
    _, waited = wait_state(r["microvmId"], "SUSPENDED", 60)
    t = time.monotonic()
    r_end, _ = wait_state(r["microvmId"], "TERMINATED", 30)
    r_secs = time.monotonic() - t
    say(f"R TERMINATED {r_secs:.1f} s after SUSPENDED: {r_end.get('stateReason')}")
    check(r_secs <= 12, f"retention of 5 s ended R within ~10 s, not {r_secs:.1f}")
    check(r_end.get("stateReason") == "suspended longer than suspendedDurationSeconds",
          f"R's reason: {r_end}")
    check("terminatedAt" in r_end, r_end)
    check(not os.path.exists(engine_files(r["microvmId"])), f"R's files are deleted: {engine_files(r['microvmId'])}")

    # D: maximum duration, RUNNING with traffic.
    d = run(arn, maximumDurationInSeconds=8)
    d_started = time.monotonic()
    check(d["maximumDurationInSeconds"] == 8, d)
    d_tok = token(d["microvmId"])
    check(app_state(d, d_tok)["requests"] >= 1, "D answers")
    d_end, _ = wait_state(d["microvmId"], "TERMINATED", 30)
    d_secs = time.monotonic() - d_started
    say(f"D TERMINATED {d_secs:.1f} s after RunMicrovm: {d_end.get('stateReason')}")
    check(d_end.get("stateReason") == "maximum duration of the microVM elapsed", f"D's reason: {d_end}")
    check(d_secs <= 15, f"D ended ~8 s after its start, not {d_secs:.1f}")
    check(not os.path.exists(engine_files(d["microvmId"])), "D's files are deleted")
    r_after = get(d, "/state", d_tok)
    check(r_after.status_code in (404, 409), f"a terminated microVM is not reachable: {r_after.status_code}")

    # N: no auto-resume.
    n = run(arn, idlePolicy={"maxIdleDurationSeconds": 900, "suspendedDurationSeconds": 0,
                             "autoResumeEnabled": False})
    n_tok = token(n["microvmId"])
    before = app_state(n, n_tok)
    client.suspend_microvm(microvmIdentifier=n["microvmId"])
    wait_state(n["microvmId"], "SUSPENDED", 60)
    resp = get(n, "/state", n_tok)
    say(f"N SUSPENDED, request: {resp.status_code} {resp.text.strip()}")
    body = refused(resp, 409, ["SUSPENDED", "ResumeMicrovm"], n_tok)
    check(state_of(n["microvmId"])["state"] == "SUSPENDED", "a refused request does not resume N")
    for op, mid, words in [("suspend_microvm", n["microvmId"], "SUSPENDED"),
                           ("resume_microvm", w["microvmId"], "RUNNING"),
                           ("suspend_microvm", d["microvmId"], "TERMINATED"),
                           ("resume_microvm", d["microvmId"], "TERMINATED"),
                           ("terminate_microvm", d["microvmId"], "TERMINATED")]:
        code, msg, status = error_of(getattr(client, op), microvmIdentifier=mid)
        say(f"{op} of a {words} microVM: {status} {code}: {msg}")
        check(status == 409 and code == "ConflictException" and words in msg, f"{op}: {status} {code} {msg}")
    client.resume_microvm(microvmIdentifier=n["microvmId"])
    wait_state(n["microvmId"], "RUNNING", 60)
    after = app_state(n, n_tok)
    check(after["requests"] == before["requests"] + 1 and after["hostname"] == before["hostname"],
          f"N resumed with its memory: {before} then {after}")

    # I: suspended by the idle policy, not before 60 s.
    left = 55 - (time.monotonic() - i_started)
    if left > 0:
        time.sleep(left)
    early = time.monotonic() - i_started
    if early < 58:
        check(state_of(i["microvmId"])["state"] == "RUNNING",
              f"I is still RUNNING {early:.0f} s after RunMicrovm")
    else:
        say(f"the checks above took {early:.0f} s: too late to see I RUNNING before its 60 s")
    i_susp, _ = wait_state(i["microvmId"], "SUSPENDED", 40)
    i_secs = time.monotonic() - i_started
    say(f"I SUSPENDED {i_secs:.1f} s after RunMicrovm (maxIdleDurationSeconds 60)")
    check(i_secs <= 80, f"I suspended within ~60-75 s, not {i_secs:.1f}")
    w_now = state_of(w["microvmId"])
    say(f"W (WebSocket traffic every 10 s) is {w_now['state']}")
    check(not ws_errors, f"W's WebSocket failed: {ws_errors}")
    check(w_now["state"] == "RUNNING", f"WebSocket traffic keeps W from idling: {w_now}")
    dl.join(90)
    say(f"L's slow download: {drip.get('status')} after {drip.get('secs', 0):.0f} s; L is "
        f"{state_of(l_vm['microvmId'])['state']}")
    check(drip.get("status") == 200 and drip.get("body", "").count("drip") == 15,
          f"L's 75 s download went through whole: {drip}")
    check(state_of(l_vm["microvmId"])["state"] == "RUNNING",
          "a download in progress keeps L from idling")
    # Five requests at once to the SUSPENDED microVM: one resume, all
    # answered by the same process, each counted once.
    t = time.monotonic()
    answers, failures = [], []

    def one():
        try:
            answers.append(app_state(i, i_tok))
        except Exception as e:  # noqa: BLE001 (reported below)
            failures.append(repr(e))

    burst = [threading.Thread(target=one) for _ in range(5)]
    for th in burst:
        th.start()
    for th in burst:
        th.join(120)
    say(f"5 requests at once auto-resumed I in {time.monotonic() - t:.1f} s: {answers}")
    check(not failures and len(answers) == 5, f"all five answered: {answers} {failures}")
    check(len({(x["pid"], x["hostname"]) for x in answers}) == 1, f"one process answered all: {answers}")
    check(sorted(x["requests"] for x in answers) == [1, 2, 3, 4, 5],
          f"each request reached the app once, after one resume: {answers}")
    check(state_of(i["microvmId"])["state"] == "RUNNING", "I RUNNING again")
    ws_stop.set()
    chat.join(30)
    ws.close()
    for m in (w, i, n, l_vm):
        client.terminate_microvm(microvmIdentifier=m["microvmId"])
    for m in (w, i, n, l_vm):
        wait_state(m["microvmId"], "TERMINATED", 60)
    emit(ids=[m["microvmId"] for m in (w, i, r, d, n, l_vm)], iSuspendSecs=round(i_secs, 1),
         retentionSecs=round(r_secs, 1), maxDurationSecs=round(d_secs, 1))


def s_streaming(a):
    """100 MiB up and 100 MiB down at once through the proxy while a third
    client's small requests stay prompt, with the server's RSS bounded."""
    arn = build_image(a["name"], "probe")
    m = run(arn)
    tok = token(m["microvmId"])
    pid = int(os.environ["SERVE_PID"])
    app_state(m, tok)
    size = 100 * 1024 * 1024
    base = rss_kib(pid)
    peak = [base]
    done = threading.Event()
    results, errors, latencies = {}, [], []

    def sample():
        while not done.wait(0.1):
            peak[0] = max(peak[0], rss_kib(pid))

    def upload():
        try:
            block = bytes(range(256)) * 4096  # 1 MiB

            def chunks():
                for _ in range(size // len(block)):
                    yield block
            t = time.monotonic()
            r = requests.post(url(m, "/upload"), data=chunks(), headers={"X-aws-proxy-auth": tok}, timeout=900)
            results["upload"] = (r.status_code, r.text, time.monotonic() - t)
        except Exception as e:  # noqa: BLE001
            errors.append(f"upload: {e!r}")

    def download():
        try:
            t = time.monotonic()
            r = get(m, f"/download?bytes={size}", tok, timeout=900, stream=True)
            h, n = hashlib.sha256(), 0
            for chunk in r.iter_content(1024 * 1024):
                h.update(chunk)
                n += len(chunk)
            results["download"] = (r.status_code, n, h.hexdigest(), time.monotonic() - t)
        except Exception as e:  # noqa: BLE001
            errors.append(f"download: {e!r}")

    threads = [threading.Thread(target=f, daemon=True) for f in (sample, upload, download)]
    for th in threads:
        th.start()
    while threads[1].is_alive() or threads[2].is_alive():
        t = time.monotonic()
        try:
            r = get(m, "/state", tok, timeout=30)
            latencies.append((round(time.monotonic() - t, 3), r.status_code))
        except Exception as e:  # noqa: BLE001
            errors.append(f"probe: {e!r}")
        time.sleep(0.5)
    done.set()
    for th in threads:
        th.join()
    check(not errors, f"errors: {errors}")
    code, text, up_secs = results["upload"]
    block = bytes(range(256)) * 4096
    want = hashlib.sha256(block * 100).hexdigest()
    check(code == 200 and json.loads(text) == {"bytes": size, "sha256": want}, f"upload: {code} {text}")
    code, n, digest, down_secs = results["download"]
    pattern = bytes(range(256)) * 256
    check(code == 200 and n == size and digest == hashlib.sha256(pattern * 1600).hexdigest(),
          f"download: {code} {n} bytes")
    slow = [l for l in latencies if l[0] >= 2 or l[1] != 200]
    growth_mib = (peak[0] - base) / 1024
    say(f"upload {up_secs:.1f} s ({size / up_secs / 1e6:.1f} MB/s), download {down_secs:.1f} s "
        f"({size / down_secs / 1e6:.1f} MB/s); {len(latencies)} probes, slowest "
        f"{max(l[0] for l in latencies) if latencies else None} s; serve RSS {base // 1024} MiB -> peak "
        f"{peak[0] // 1024} MiB (+{growth_mib:.1f} MiB)")
    check(len(latencies) >= 3, f"the probe ran during the transfers: {latencies}")
    check(not slow, f"probes answered within 2 s during the transfers: {slow}")
    check(growth_mib < 64, f"the server's RSS grew {growth_mib:.1f} MiB during 200 MiB of transfers")
    emit(uploadSecs=round(up_secs, 1), downloadSecs=round(down_secs, 1), rssGrowthMiB=round(growth_mib, 1),
         probes=len(latencies), slowestProbeSecs=max(l[0] for l in latencies))


def s_restart_before(a):
    """A running microVM, a suspended one, and a busy one: idle limit 60 s,
    no auto-resume, a request every 5 s for 65 s since it started (so its
    last request is recent but its last state change is not)."""
    arn = build_image(a["name"], a.get("app", "hello-stdlib"))
    busy = run(arn, idlePolicy={"maxIdleDurationSeconds": 60, "suspendedDurationSeconds": 0,
                                "autoResumeEnabled": False})
    busy_started = time.monotonic()
    busy_tok = token(busy["microvmId"], minutes=30)
    policy = {"maxIdleDurationSeconds": 900, "suspendedDurationSeconds": 0, "autoResumeEnabled": True}
    run_m, susp_m = run(arn, idlePolicy=policy), run(arn, idlePolicy=policy)
    out = {}
    for key, m in (("running", run_m), ("suspended", susp_m)):
        tok = token(m["microvmId"], minutes=30)
        app_state(m, tok)
        s = app_state(m, tok)
        out[key] = {"id": m["microvmId"], "token": tok, "state": s}
    client.suspend_microvm(microvmIdentifier=susp_m["microvmId"])
    wait_state(susp_m["microvmId"], "SUSPENDED", 60)
    while True:
        s = app_state(busy, busy_tok)
        if time.monotonic() - busy_started >= 65:
            break
        time.sleep(5)
    check(state_of(busy["microvmId"])["state"] == "RUNNING", "requests every 5 s keep the busy microVM RUNNING")
    out["busy"] = {"id": busy["microvmId"], "token": busy_tok, "state": s}
    say(f"before the kill: {out['running']['id']} RUNNING, {out['suspended']['id']} SUSPENDED, "
        f"{busy['microvmId']} RUNNING with its last request just now")
    emit(imageArn=arn, **out)


def s_restart_after(a):
    """After a SIGKILL and a restart: states as they were, memory intact."""
    before = json.loads(a["before"])
    r, s = before["running"], before["suspended"]
    listed = {i["microvmId"]: i["state"] for i in client.list_microvms()["items"]}
    say(f"ListMicrovms after the restart: {listed}")
    check(listed.get(r["id"]) == "RUNNING", f"the running microVM is RUNNING: {listed}")
    check(listed.get(s["id"]) == "SUSPENDED", f"the suspended microVM is SUSPENDED: {listed}")
    for key, tok_of in (("running", r), ("suspended", s)):
        m = state_of(tok_of["id"])
        t = time.monotonic()
        now = app_state(m, tok_of["token"])
        was = tok_of["state"]
        say(f"{key}: {was} then {now} ({time.monotonic() - t:.1f} s)")
        check(now["hostname"] == was["hostname"] and now["pid"] == was["pid"], f"{key}: the same app: {was} vs {now}")
        check(now["requests"] == was["requests"] + 1, f"{key}: its memory is intact: {was} then {now}")
        check(state_of(tok_of["id"])["state"] == "RUNNING", f"{key} RUNNING")
    # The busy microVM's last request came seconds before the kill: its
    # idle limit (60 s) is far off, so it stays RUNNING and answers (without
    # auto-resume, a suspended one would answer 409).
    b = before["busy"]
    check(listed.get(b["id"]) == "RUNNING", f"the busy microVM is RUNNING after the restart: {listed}")
    t = time.monotonic()
    while time.monotonic() - t < 15:
        m = state_of(b["id"])
        check(m["state"] == "RUNNING",
              f"the busy microVM, last requested seconds before the kill, is {m['state']} "
              f"{time.monotonic() - t:.0f} s after the restart: its idle clock restarted from its last "
              f"state change, not its last request")
        time.sleep(1)
    r = get(m, "/state", b["token"])
    check(r.status_code == 200 and r.json()["requests"] == b["state"]["requests"] + 1,
          f"the busy microVM answers with its memory: {r.status_code} {r.text}")
    emit(ok=True)


def s_many(a):
    """`suspended` microVMs, each having answered, then `running` more at
    once; each its own hostname; the suspended ones keep their memory."""
    arn = a["imageArn"]
    n_susp, n_run = int(a["suspended"]), int(a["running"])
    policy = {"maxIdleDurationSeconds": 3600, "suspendedDurationSeconds": 0, "autoResumeEnabled": True}
    seen = {}
    t_start = time.monotonic()
    run_secs, susp_secs = [], []

    def launch():
        t = time.monotonic()
        m = client.run_microvm(imageIdentifier=arn, idlePolicy=policy)
        check(m["state"] == "RUNNING", m)
        tok = token(m["microvmId"], minutes=60)
        s = app_state(m, tok)
        run_secs.append(time.monotonic() - t)
        check(s["hostname"] == m["microvmId"], f"{m['microvmId']} has a hostname of its own: {s}")
        seen[m["microvmId"]] = {"m": m, "token": tok, "state": s}
        return m

    for k in range(n_susp):
        m = launch()
        t = time.monotonic()
        client.suspend_microvm(microvmIdentifier=m["microvmId"])
        wait_state(m["microvmId"], "SUSPENDED", 60)
        susp_secs.append(time.monotonic() - t)
        if (k + 1) % 10 == 0:
            say(f"{k + 1} suspended ({time.monotonic() - t_start:.0f} s)")
    suspended = list(seen)
    running = [launch()["microvmId"] for _ in range(n_run)]
    say(f"{n_run} running beside {n_susp} suspended ({time.monotonic() - t_start:.0f} s)")

    states, token_ = {}, None
    while True:
        page = client.list_microvms(maxResults=50, **({"nextToken": token_} if token_ else {}))
        states.update({i["microvmId"]: i["state"] for i in page["items"]})
        token_ = page.get("nextToken")
        if not token_:
            break
    check(sorted(k for k, v in states.items() if v == "SUSPENDED") == sorted(suspended),
          f"ListMicrovms: {n_susp} SUSPENDED")
    check(sorted(k for k, v in states.items() if v == "RUNNING") == sorted(running),
          f"ListMicrovms: {n_run} RUNNING")
    for mid in running:
        v = seen[mid]
        s = app_state(v["m"], v["token"])
        check(s["hostname"] == v["state"]["hostname"] and s["requests"] == v["state"]["requests"] + 1,
              f"{mid} answers with its own state: {v['state']} then {s}")
    for mid in random.Random(7).sample(suspended, min(3, len(suspended))):
        v = seen[mid]
        s = app_state(v["m"], v["token"])
        check(s["hostname"] == v["state"]["hostname"] and s["requests"] == v["state"]["requests"] + 1,
              f"suspended {mid} resumes with its own state: {v['state']} then {s}")
    total = time.monotonic() - t_start
    run_secs.sort()
    susp_secs.sort()
    say(f"RunMicrovm + token + first request: p50 {run_secs[len(run_secs) // 2]:.2f} s, "
        f"max {run_secs[-1]:.2f} s; suspend: p50 {susp_secs[len(susp_secs) // 2]:.2f} s, "
        f"max {susp_secs[-1]:.2f} s; total {total:.0f} s")
    emit(running=running, suspended=suspended, totalSecs=round(total),
         runP50Secs=round(run_secs[len(run_secs) // 2], 2),
         suspendP50Secs=round(susp_secs[len(susp_secs) // 2], 2))


SCENARIOS = {
    "build": s_build,
    "reference-cli": s_reference_cli,
    "data-plane": s_data_plane,
    "token-setup": s_token_setup,
    "token-scope": s_token_scope,
    "cross-account": s_cross_account,
    "lifecycle": s_lifecycle,
    "streaming": s_streaming,
    "restart-before": s_restart_before,
    "restart-after": s_restart_after,
    "many": s_many,
}

if __name__ == "__main__":
    scenario = sys.argv[1]
    args = dict(kv.split("=", 1) for kv in sys.argv[2:])
    SCENARIOS[scenario](args)
