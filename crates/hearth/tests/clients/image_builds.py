"""Image builds through boto3 against a live `hearth serve` (run by image_builds.rs).

Usage: image_builds.py SCENARIO [key=value ...]

Each scenario drives the API with boto3, checks what a client can see
(states, reasons, sizes, error codes) and prints, as its last line,
`RESULT {json}` with the ids the Rust side needs for what only it can see
(the server's files and processes). Code artifacts are zips this script
writes into ARTIFACT_DIR (the server's --artifact-root) from the examples
in EXAMPLES_DIR, with a Dockerfile replaced where a scenario says so.

Environment: HEARTH_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
ARTIFACT_DIR, EXAMPLES_DIR.
"""
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile

import boto3
import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

E = os.environ["HEARTH_ENDPOINT"]
AK, SK = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
ARTIFACTS = os.environ["ARTIFACT_DIR"]
EXAMPLES = os.environ["EXAMPLES_DIR"]
REGION = "us-east-1"
BASE_ARN = f"arn:aws:lambda:{REGION}:aws:microvm-image:debian-12-python"
ROLE = "arn:aws:iam::123456789012:role/hearth-build"
HOOK_PREFIX = "/aws/lambda-microvms/runtime/v1/"

client = boto3.client("lambda-microvms", endpoint_url=E, region_name=REGION,
                      config=Config(retries={"max_attempts": 1}))
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


# --- code artifacts ---------------------------------------------------------

def make_zip(name, files):
    """Write ARTIFACT_DIR/<name>.zip from {arcname: bytes}; return its file:// URI."""
    path = os.path.join(ARTIFACTS, name + ".zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname in sorted(files):
            info = zipfile.ZipInfo(arcname, date_time=(2025, 1, 1, 0, 0, 0))
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[arcname])
    return "file://" + path


def example_files(example):
    root = os.path.join(EXAMPLES, example)
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in filenames:
            full = os.path.join(dirpath, f)
            with open(full, "rb") as fh:
                files[os.path.relpath(full, root)] = fh.read()
    check("Dockerfile" in files, f"{root} has no Dockerfile")
    return files


def artifact(example, zip_name, dockerfile=None):
    files = example_files(example)
    if dockerfile is not None:
        files["Dockerfile"] = dockerfile.encode()
    return make_zip(zip_name, files)


HELLO_CMD = 'CMD ["python3", "/app/server.py"]'


def hello_dockerfile(*middle, from_line="FROM debian-12-python"):
    """hello-stdlib's Dockerfile with `middle` lines after its COPY."""
    lines = [from_line, "COPY server.py /app/", *middle, "EXPOSE 8080", HELLO_CMD]
    return "\n".join(lines) + "\n"


# --- the API ----------------------------------------------------------------

def create(name, uri, **kw):
    r = client.create_microvm_image(name=name, baseImageArn=BASE_ARN, buildRoleArn=ROLE,
                                    codeArtifact={"uri": uri}, **kw)
    check(r["ResponseMetadata"]["HTTPStatusCode"] == 201, f"CreateMicrovmImage answered {r['ResponseMetadata']}")
    check(r["state"] == "CREATING", f"a new image is CREATING: {r}")
    check(r["imageVersion"] == "1", f"a new image's version is 1: {r}")
    check(r["name"] == name, r)
    say(f"created {name}: {r['imageArn']}")
    return r


def image_id(arn):
    return arn.rsplit(":", 1)[1]


def build_id(arn, version):
    items = client.list_microvm_image_builds(imageIdentifier=arn, imageVersion=version)["items"]
    check(len(items) == 1, f"version {version} of {arn} has one build: {items}")
    return items[0]["buildId"]


def get_build(arn, version, bid):
    return client.get_microvm_image_build(imageIdentifier=arn, imageVersion=version, buildId=bid)


def wait_build(arn, version, bid, timeout_secs, until=("SUCCESSFUL", "FAILED")):
    """Poll the build until its state is in `until`; log each state seen."""
    deadline = time.monotonic() + timeout_secs
    last = None
    while True:
        b = get_build(arn, version, bid)
        if b["buildState"] != last:
            last = b["buildState"]
            say(f"build {bid}: {last} {b.get('stateReason', '')}")
        if last in until:
            return b
        check(time.monotonic() < deadline,
              f"build {bid} still {last} after {timeout_secs} s (waiting for {until})")
        time.sleep(1)


def settle(arn, version, timeout_secs=30):
    """After the build ended: the version and the image reach their final
    states too (a build writes build, version, image in turn). Returns both."""
    deadline = time.monotonic() + timeout_secs
    while True:
        v = client.get_microvm_image_version(imageIdentifier=arn, imageVersion=version)
        img = client.get_microvm_image(imageIdentifier=arn)
        if v["state"] in ("SUCCESSFUL", "FAILED") and img["state"] not in ("CREATING", "UPDATING"):
            say(f"version {version}: {v['state']}/{v['status']}; image: {img['state']}")
            return v, img
        check(time.monotonic() < deadline,
              f"stuck after the build ended: version {v['state']}, image {img['state']}")
        time.sleep(0.5)


def expect_success(arn, timeout_secs):
    bid = build_id(arn, "1")
    b = wait_build(arn, "1", bid, timeout_secs)
    check(b["buildState"] == "SUCCESSFUL", f"build failed: {b.get('stateReason')}")
    check("stateReason" not in b or not b["stateReason"], f"a successful build has no reason: {b}")
    sizes = b.get("snapshotBuild") or {}
    for k in ("memorySnapshotSizeInBytes", "diskSnapshotSizeInBytes", "codeInstallSizeInBytes"):
        check(isinstance(sizes.get(k), int) and sizes[k] > 0, f"snapshotBuild.{k} > 0: {sizes}")
    check(b["architecture"] == "X86_64", b)
    v, img = settle(arn, "1")
    check(v["state"] == "SUCCESSFUL" and v["status"] == "ACTIVE", f"version: {v}")
    check(img["state"] == "CREATED", f"image: {img}")
    check(img.get("latestActiveImageVersion") == "1", f"latestActiveImageVersion: {img}")
    return bid, b, v


def expect_failure(arn, timeout_secs):
    bid = build_id(arn, "1")
    b = wait_build(arn, "1", bid, timeout_secs)
    check(b["buildState"] == "FAILED", f"the build should fail: {b}")
    reason = b.get("stateReason") or ""
    check(reason, f"a failed build says why: {b}")
    check("snapshotBuild" not in b, f"a failed build has no snapshot: {b}")
    v, img = settle(arn, "1")
    check(v["state"] == "FAILED", f"version: {v}")
    check(v["status"] != "ACTIVE", f"a failed version is not ACTIVE: {v}")
    check(img["state"] == "CREATE_FAILED", f"image: {img}")
    check(img.get("latestFailedImageVersion") == "1", f"latestFailedImageVersion: {img}")
    check(not img.get("latestActiveImageVersion"), f"no active version: {img}")
    return bid, reason


def build_log(arn, version, bid):
    """The build log as text, from Hearth's extension endpoint
    `GET /hearth/v1/images/{imageId}/versions/{v}/builds/{buildId}/logs`
    (SigV4-signed like any API request)."""
    path = "/hearth/v1/images/{}/versions/{}/builds/{}/logs".format(
        *(urllib.parse.quote(p, safe="") for p in (image_id(arn), version, bid)))
    req = AWSRequest(method="GET", url=E + path, headers={})
    botocore.auth.SigV4Auth(Credentials(AK, SK), "lambda", REGION).add_auth(req)
    prepared = req.prepare()
    r = urllib.request.Request(prepared.url, method="GET", headers=dict(prepared.headers))
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        raise AssertionError(f"GET {path}: {e.code} {e.headers.get('x-amzn-errortype')} {e.read()!r}")
    return body.decode("utf-8", "replace")


# --- scenarios --------------------------------------------------------------

def s_success(a):
    r = create(a["name"], artifact("hello-stdlib", a["name"]))
    bid, b, _ = expect_success(r["imageArn"], int(a.get("timeout", 240)))
    emit(imageArn=r["imageArn"], imageId=image_id(r["imageArn"]), version="1", buildId=bid,
         snapshotBuild=b["snapshotBuild"])


def s_failing_run(a):
    df = hello_dockerfile("RUN echo doomed-marker && false")
    r = create(a["name"], artifact("hello-stdlib", a["name"], df))
    bid, reason = expect_failure(r["imageArn"], 240)
    say(f"reason: {reason}")
    check("step 2/2" in reason, f"the reason names the step (2 of 2): {reason}")
    check("RUN echo doomed-marker && false" in reason, f"the reason names the instruction: {reason}")
    check("exit code 1" in reason, f"the reason gives the exit code: {reason}")
    check("Last output:" in reason and "doomed-marker" in reason.split("Last output:", 1)[1],
          f"the reason quotes the step's output: {reason}")
    emit(imageArn=r["imageArn"], imageId=image_id(r["imageArn"]), version="1", buildId=bid, reason=reason)


def s_unsupported_instruction(a):
    df = "FROM debian-12-python\nCOPY server.py /app/\nVOLUME /x\n" + HELLO_CMD + "\n"
    r = create(a["name"], artifact("hello-stdlib", a["name"], df))
    bid, reason = expect_failure(r["imageArn"], 60)
    say(f"reason: {reason}")
    check("line 3" in reason and "VOLUME" in reason, f"the reason names line 3 and VOLUME: {reason}")
    emit(imageArn=r["imageArn"], imageId=image_id(r["imageArn"]), version="1", buildId=bid, reason=reason)


def s_from_mismatch(a):
    df = hello_dockerfile(from_line="FROM python:3.12")
    r = create(a["name"], artifact("hello-stdlib", a["name"], df))
    bid, reason = expect_failure(r["imageArn"], 60)
    say(f"reason: {reason}")
    check("FROM" in reason and "python:3.12" in reason, f"the reason names FROM and its value: {reason}")
    check("debian-12-python" in reason, f"the reason names the base image: {reason}")
    emit(imageArn=r["imageArn"], imageId=image_id(r["imageArn"]), version="1", buildId=bid, reason=reason)


def s_ready_gating(a):
    delay = int(a.get("delay", 8))
    r = create(a["name"], artifact("hello-stdlib", a["name"]),
               environmentVariables={"READY_DELAY_SECS": str(delay)},
               hooks={"port": 8080, "microvmImageHooks": {"ready": "ENABLED", "readyTimeoutInSeconds": 180}})
    arn = r["imageArn"]
    bid, _, v = expect_success(arn, 300)
    check(v.get("environmentVariables") == {"READY_DELAY_SECS": str(delay)}, f"version keeps its variables: {v}")
    check((v.get("hooks") or {}).get("microvmImageHooks", {}).get("ready") == "ENABLED", f"version keeps its hooks: {v}")
    # The log shows the build waiting on the ready hook: the app's own lines
    # (it answered 503 while warming up, then 200) and the builder's.
    log = build_log(arn, "1", bid)
    say("log lines about readiness:\n  " + "\n  ".join(l for l in log.splitlines() if "ready" in l))
    check("hello-stdlib: ready hook: 503" in log, f"the log shows the ready hook answering 503:\n{log}")
    check("hello-stdlib: ready hook: 200" in log, f"the log shows the ready hook answering 200:\n{log}")
    check(log.index("ready hook: 503") < log.index("ready hook: 200"), f"503 before 200:\n{log}")
    check("ready hook" in log.replace("hello-stdlib: ready hook", ""),
          f"the builder's own line about waiting for the ready hook:\n{log}")
    emit(imageArn=arn, imageId=image_id(arn), version="1", buildId=bid)


def s_validate_rejects(a):
    r = create(a["name"], artifact("hello-stdlib", a["name"]),
               environmentVariables={"VALIDATE_FAIL": "1"},
               hooks={"port": 8080, "microvmImageHooks": {"validate": "ENABLED", "validateTimeoutInSeconds": 30}})
    bid, reason = expect_failure(r["imageArn"], 300)
    say(f"reason: {reason}")
    check("validate hook" in reason, f"the reason names the validate hook: {reason}")
    check("500" in reason, f"the reason gives the hook's answer: {reason}")
    emit(imageArn=r["imageArn"], imageId=image_id(r["imageArn"]), version="1", buildId=bid, reason=reason)


def s_start_slow_build(a):
    """Create an image whose build sleeps in a RUN step; return once IN_PROGRESS."""
    df = hello_dockerfile("RUN sleep 120")
    r = create(a["name"], artifact("hello-stdlib", a["name"], df))
    arn = r["imageArn"]
    bid = build_id(arn, "1")
    b = wait_build(arn, "1", bid, 120, until=("IN_PROGRESS", "SUCCESSFUL", "FAILED"))
    check(b["buildState"] == "IN_PROGRESS", f"the build should be running: {b}")
    v = client.get_microvm_image_version(imageIdentifier=arn, imageVersion="1")
    check(v["state"] == "IN_PROGRESS", f"its version is IN_PROGRESS: {v}")
    check(client.get_microvm_image(imageIdentifier=arn)["state"] == "CREATING", "the image is CREATING")
    emit(imageArn=arn, imageId=image_id(arn), version="1", buildId=bid)


def s_delete_image(a):
    arn = a["arn"]
    check(get_build(arn, "1", a["build"])["buildState"] == "IN_PROGRESS", "still building when deleted")
    out = client.delete_microvm_image(imageIdentifier=arn)
    say(f"delete: {out['state']}")
    check(out["state"] in ("DELETED", "DELETING"), out)
    deadline = time.monotonic() + 60
    while True:
        try:
            img = client.get_microvm_image(imageIdentifier=arn)
        except ClientError as e:
            code = e.response["Error"]["Code"]
            check(code == "ResourceNotFoundException", e.response)
            break
        check(time.monotonic() < deadline, f"the image is still there: {img['state']}")
        time.sleep(0.5)
    code, _, _ = error_of(client.list_microvm_image_builds, imageIdentifier=arn, imageVersion="1")
    check(code == "ResourceNotFoundException", f"its builds are gone too: {code}")
    names = [i["name"] for i in client.list_microvm_images()["items"]]
    check(a["name"] not in names, f"not listed: {names}")
    emit(deleted=arn)


def s_expect_interrupted(a):
    arn, bid = a["arn"], a["build"]
    deadline = time.monotonic() + 60
    while True:
        b = get_build(arn, "1", bid)
        if b["buildState"] == "FAILED":
            break
        check(b["buildState"] == "IN_PROGRESS" or b["buildState"] == "PENDING", b)
        check(time.monotonic() < deadline, f"the interrupted build is stuck {b['buildState']}")
        time.sleep(0.5)
    reason = b.get("stateReason") or ""
    say(f"reason: {reason}")
    check("interrupted" in reason.lower(), f"the reason says the build was interrupted: {reason}")
    v, img = settle(arn, "1")
    check(v["state"] == "FAILED", f"version: {v}")
    check(img["state"] == "CREATE_FAILED", f"image: {img}")
    emit(reason=reason)


def s_two_at_once(a):
    uri = artifact("hello-stdlib", a["name"])
    r1 = create(a["name"] + "-a", uri)
    r2 = create(a["name"] + "-b", uri, resources=[{"minimumMemoryInMiB": 256}])
    # Both builds run at once (the server runs 2 at a time by default):
    # poll both until they end, noting whether both were IN_PROGRESS together.
    bids = [build_id(r["imageArn"], "1") for r in (r1, r2)]
    deadline = time.monotonic() + 400
    together = False
    while True:
        states = [get_build(r["imageArn"], "1", b)["buildState"] for r, b in zip((r1, r2), bids)]
        together = together or states == ["IN_PROGRESS", "IN_PROGRESS"]
        if all(st in ("SUCCESSFUL", "FAILED") for st in states):
            break
        check(time.monotonic() < deadline, f"builds still {states}")
        time.sleep(1)
    say(f"both IN_PROGRESS at once: {together}")
    check(together, "the two builds never ran at the same time")
    out = []
    for r in (r1, r2):
        bid, b, v = expect_success(r["imageArn"], 10)
        out.append({"imageArn": r["imageArn"], "imageId": image_id(r["imageArn"]), "version": "1",
                    "buildId": bid})
    v1 = client.get_microvm_image_version(imageIdentifier=r1["imageArn"], imageVersion="1")
    v2 = client.get_microvm_image_version(imageIdentifier=r2["imageArn"], imageVersion="1")
    check(not v1.get("resources"), f"no resources asked, none reported: {v1}")
    check(v2.get("resources") == [{"minimumMemoryInMiB": 256}], f"resources kept: {v2.get('resources')}")
    emit(images=out)


def s_memory_range(a):
    uri = artifact("hello-stdlib", a["name"])
    for mib in (64, 100000):
        code, msg, status = error_of(create_raw, name=f"{a['name']}-{mib}", uri=uri,
                                     resources=[{"minimumMemoryInMiB": mib}])
        say(f"minimumMemoryInMiB {mib}: {status} {code}: {msg}")
        check(code == "ValidationException" and status == 400, f"{mib} MiB: {code} {msg}")
        check("minimumMemoryInMiB" in msg, f"the message names the member: {msg}")
    check(client.list_microvm_images()["items"] == [], "nothing was created")
    emit(ok=True)


def create_raw(name, uri, **kw):
    return client.create_microvm_image(name=name, baseImageArn=BASE_ARN, buildRoleArn=ROLE,
                                       codeArtifact={"uri": uri}, **kw)


def s_refused_at_once(a):
    """Requests a build could never satisfy are refused synchronously."""
    uri = artifact("hello-stdlib", a["name"])
    cases = [
        ("an unknown base image", dict(baseImageArn=f"arn:aws:lambda:{REGION}:aws:microvm-image:no-such-image")),
        ("an unknown base image version", dict(baseImageVersion="999")),
        ("a file outside the artifact roots", dict(codeArtifact={"uri": "file:///etc/passwd"})),
        ("a missing file under the root", dict(codeArtifact={"uri": "file://" + os.path.join(ARTIFACTS, "absent.zip")})),
        ("an unsupported scheme", dict(codeArtifact={"uri": "https://example.com/app.zip"})),
    ]
    for what, override in cases:
        kw = dict(name=a["name"], baseImageArn=BASE_ARN, buildRoleArn=ROLE, codeArtifact={"uri": uri})
        kw.update(override)
        code, msg, status = error_of(client.create_microvm_image, **kw)
        say(f"{what}: {status} {code}: {msg}")
        check(code == "ValidationException" and status == 400, f"{what}: {code} {msg}")
    check(client.list_microvm_images()["items"] == [], "nothing was created")
    emit(ok=True)


def s_duplicate_name(a):
    # A Dockerfile whose build fails before any microVM starts: this is
    # about the API's answer, not the build.
    uri = artifact("hello-stdlib", a["name"], hello_dockerfile(from_line="FROM python:3.12"))
    create(a["name"], uri)
    code, msg, status = error_of(create_raw, name=a["name"], uri=uri)
    check(status == 400 and code == "ValidationException", f"{status} {code}: {msg}")
    want = f"A MicroVM image with the name '{a['name']}' already exists in this account"
    check(msg == want, f"message {msg!r}, want {want!r}")
    items = client.list_microvm_images()["items"]
    check(len(items) == 1, f"one image: {items}")
    emit(message=msg)


def s_client_token(a):
    uri = artifact("hello-stdlib", a["name"], hello_dockerfile(from_line="FROM python:3.12"))
    token = "tok-image-builds-0001"
    first = create(a["name"], uri, clientToken=token)
    again = create_raw(a["name"], uri, clientToken=token)
    check(again["ResponseMetadata"]["HTTPStatusCode"] == 201, again["ResponseMetadata"])
    check(again["imageArn"] == first["imageArn"], f"a replay answers the same image: {first['imageArn']} vs {again['imageArn']}")
    check(again["imageVersion"] == first["imageVersion"], again)
    items = client.list_microvm_images()["items"]
    check(len(items) == 1 and items[0]["imageArn"] == first["imageArn"], f"one image exists: {items}")
    check(len(client.list_microvm_image_versions(imageIdentifier=first["imageArn"])["items"]) == 1,
          "one version exists")
    code, msg, status = error_of(create_raw, name=a["name"], uri=uri, clientToken=token,
                                 description="a different request")
    say(f"same token, another body: {status} {code}: {msg}")
    check(code == "ConflictException" and status == 409, f"{status} {code}: {msg}")
    check("clientToken" in msg, msg)
    code, _, _ = error_of(create_raw, name=a["name"] + "-2", uri=uri, clientToken=token)
    check(code == "ConflictException", f"another name with the same token: {code}")
    check(len(client.list_microvm_images()["items"]) == 1, "still one image")
    emit(imageArn=first["imageArn"])


def s_flask(a):
    r = create(a["name"], artifact("flask-hello", a["name"]))
    bid, b, _ = expect_success(r["imageArn"], int(a.get("timeout", 900)))
    # pip fetched and installed the pinned packages in the builder.
    log = build_log(r["imageArn"], "1", bid)
    installed = [l for l in log.splitlines() if "Successfully installed" in l]
    say(f"pip: {installed}")
    check(installed and "Flask-3.1.3" in installed[-1] and "gunicorn-23.0.0" in installed[-1],
          f"the log shows pip installing Flask and gunicorn:\n{log}")
    emit(imageArn=r["imageArn"], imageId=image_id(r["imageArn"]), version="1", buildId=bid,
         snapshotBuild=b["snapshotBuild"])


SCENARIOS = {
    "success": s_success,
    "failing-run": s_failing_run,
    "unsupported-instruction": s_unsupported_instruction,
    "from-mismatch": s_from_mismatch,
    "ready-gating": s_ready_gating,
    "validate-rejects": s_validate_rejects,
    "start-slow-build": s_start_slow_build,
    "delete-image": s_delete_image,
    "expect-interrupted": s_expect_interrupted,
    "two-at-once": s_two_at_once,
    "memory-range": s_memory_range,
    "refused-at-once": s_refused_at_once,
    "duplicate-name": s_duplicate_name,
    "client-token": s_client_token,
    "flask": s_flask,
}

if __name__ == "__main__":
    scenario = sys.argv[1]
    args = dict(kv.split("=", 1) for kv in sys.argv[2:])
    SCENARIOS[scenario](args)
