"""boto3/botocore against a live `hearth serve` (run by api_clients.rs).

Raw requests are signed with botocore's own SigV4Auth (what boto3 and the
aws CLI use) and then tampered with, one thing at a time.
"""
import datetime
import json
import os
import urllib.error
import urllib.request

import boto3
import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

E = os.environ["HEARTH_ENDPOINT"]
ARN = os.environ["IMAGE_ARN"]
AK, SK = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
client = boto3.client("lambda-microvms", endpoint_url=E, region_name="us-east-1",
                      config=Config(retries={"max_attempts": 1}))
lam = boto3.client("lambda", endpoint_url=E, region_name="us-east-1",
                   config=Config(retries={"max_attempts": 1}))


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


# --- the paginator walks 60 items in pages of at most 50
pages = list(client.get_paginator("list_microvms").paginate())
ids = [i["microvmId"] for p in pages for i in p["items"]]
check(len(ids) == 60 and len(set(ids)) == 60, f"paginator saw {len(ids)} ids")
check(len(pages) == 2, f"expected 2 pages, got {len(pages)}")
page = client.list_microvms(maxResults=7)
check(len(page["items"]) == 7 and "nextToken" in page, "maxResults=7")
try:
    client.list_microvms(nextToken=page["nextToken"][:-2] + "AA")
    raise AssertionError("tampered nextToken accepted")
except ClientError as e:
    check(e.response["Error"]["Code"] == "ValidationException", e.response)

# --- ClientError codes and request ids
try:
    client.get_microvm(microvmIdentifier="mvm-absent")
    raise AssertionError("missing microVM found")
except ClientError as e:
    check(e.response["Error"]["Code"] == "ResourceNotFoundException", e.response)
    check(e.response["ResponseMetadata"]["HTTPStatusCode"] == 404, e.response)
    check(e.response["ResponseMetadata"].get("RequestId"), "no x-amzn-RequestId")


def send(method, path, query="", body=b"", headers=None, key=AK, secret=SK,
         when=None, tamper=None):
    """Sign with botocore, optionally tamper, send; return (status, errortype, body)."""
    url = E + path + (("?" + query) if query else "")
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    orig = botocore.auth.get_current_datetime
    if when is not None:
        botocore.auth.get_current_datetime = lambda: when
    try:
        botocore.auth.SigV4Auth(Credentials(key, secret), "lambda", "us-east-1").add_auth(req)
    finally:
        botocore.auth.get_current_datetime = orig
    prepared = req.prepare()
    url, hdrs, data = prepared.url, dict(prepared.headers), prepared.body or b""
    if isinstance(data, str):
        data = data.encode()
    if tamper:
        url, hdrs, data = tamper(url, hdrs, data)
    r = urllib.request.Request(url, data=data if method != "GET" else None, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, None, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-amzn-errortype"), e.read()


tags_path = "/2017-03-31/tags/" + urllib.parse.quote(ARN, safe="")
JSON = {"Content-Type": "application/json"}

status, _, _ = send("GET", "/2025-09-09/microvms")
check(status == 200, f"valid signed request: {status}")

now = datetime.datetime.now(datetime.timezone.utc)
cases = {
    "wrong secret": dict(secret="x" * 40),
    "unknown key": dict(key="AKIAZZZZZZZZZZZZZZZZ"),
    "stale date": dict(when=now - datetime.timedelta(minutes=16)),
    "future date": dict(when=now + datetime.timedelta(minutes=16)),
    "tampered path": dict(tamper=lambda u, h, d: (u.replace("/microvms", "/microvm-images"), h, d)),
    "tampered query": dict(query="maxResults=5", tamper=lambda u, h, d: (u.replace("maxResults=5", "maxResults=6"), h, d)),
    "tampered signed header": dict(tamper=lambda u, h, d: (u, {**h, "X-Amz-Date": h["X-Amz-Date"][:-3] + "00Z"}, d)),
    "no authorization": dict(tamper=lambda u, h, d: (u, {k: v for k, v in h.items() if k.lower() != "authorization"}, d)),
    "garbage authorization": dict(tamper=lambda u, h, d: (u, {**h, "Authorization": "AWS4-HMAC-SHA256 nonsense"}, d)),
}
expected = {
    "wrong secret": "InvalidSignatureException", "unknown key": "UnrecognizedClientException",
    "stale date": "InvalidSignatureException", "future date": "InvalidSignatureException",
    "tampered path": "InvalidSignatureException", "tampered query": "InvalidSignatureException",
    "tampered signed header": "InvalidSignatureException",
    "no authorization": "MissingAuthenticationTokenException",
    "garbage authorization": "IncompleteSignatureException",
}
for name, kw in cases.items():
    query = kw.pop("query", "")
    status, etype, body = send("GET", "/2025-09-09/microvms", query=query, **kw)
    check(status == 403 and etype == expected[name], f"{name}: {status} {etype} {body!r}")
    msg = json.loads(body)["message"]
    check(SK not in msg and "Canonical" not in msg, f"{name}: message leaks: {msg}")

# A tampered body on a mutating request: 403 and no side effect.
body = json.dumps({"Tags": {"owner": "alice"}}).encode()
status, etype, _ = send("POST", tags_path, body=body, headers=JSON,
                        tamper=lambda u, h, d: (u, h, d.replace(b"alice", b"mallo")))
check(status == 403 and etype == "InvalidSignatureException", f"tampered body: {status} {etype}")
check(lam.list_tags(Resource=ARN)["Tags"] == {}, "tampered body changed tags")

# Malformed input: rejected with 400 before any work. A body that is not
# the protocol's JSON is a SerializationException, as the AWS protocol says.
for name, data, hdrs, want in [
    ("malformed JSON", b'{"Tags": {"a": ', JSON, "SerializationException"),
    ("JSON array", b"[1,2]", JSON, "SerializationException"),
    ("wrong content type", json.dumps({"Tags": {"a": "b"}}).encode(), {"Content-Type": "text/plain"}, "ValidationException"),
    ("over 6 MiB", b'{"Tags": {"a": "' + b"x" * (6 * 1024 * 1024) + b'"}}', JSON, "RequestEntityTooLargeException"),
]:
    status, etype, resp = send("POST", tags_path, body=data, headers=hdrs)
    want_status = 413 if want == "RequestEntityTooLargeException" else 400
    check(status == want_status and etype == want, f"{name}: {status} {etype} {resp[:200]!r}")
check(lam.list_tags(Resource=ARN)["Tags"] == {}, "malformed input changed tags")

# Unknown path and wrong method.
status, etype, _ = send("GET", "/2025-09-09/nothing-here")
check(status == 404, f"unknown path: {status} {etype}")
status, etype, _ = send("PUT", "/2025-09-09/microvms")
check(status == 405 and etype == "MethodNotAllowedException", f"wrong method: {status} {etype}")

# A valid tag round trip through boto3 still works afterwards.
lam.tag_resource(Resource=ARN, Tags={"owner": "alice"})
check(lam.list_tags(Resource=ARN)["Tags"] == {"owner": "alice"}, "tag round trip")
print("boto3 suite: ok")
