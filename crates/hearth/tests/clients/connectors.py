"""Network connectors through the real API (boto3) and the endpoint proxy
(requests and the raw WebSocket client of microvms.py), one scenario per
call, for crates/hearth/tests/connectors.rs: what the API accepts and
reports, which tokens it mints, and what the proxy lets through for each
ingress connector. The shell sessions themselves are driven from Rust and
from `hearth shell`; egress is checked from inside the guest by the Rust
test.

    python connectors.py <scenario> key=value ...

prints progress, then one line `RESULT {json}`; any failed check raises.
"""
import json
import sys

from microvms import (REGION, WebSocket, build_image, check, client, emit, error_of, get,
                      refused, run, say, state_of, token, ws_protocols)


def conn(name):
    return f"arn:aws:lambda:{REGION}:aws:network-connector:aws-network-connector:{name}"


def shell_token(mid, minutes=10):
    out = client.create_microvm_shell_auth_token(microvmIdentifier=mid, expirationInMinutes=minutes)
    auth = out["authToken"]
    check(list(auth) == ["X-aws-proxy-auth"], f"the shell token comes as its header: {out}")
    return auth["X-aws-proxy-auth"]


def validation(call, words, **kw):
    code, msg, status = error_of(call, **kw)
    check((code, status) == ("ValidationException", 400), f"expected a ValidationException: {code} {status} {msg}")
    for w in words:
        check(w in msg, f"the error says {w!r}: {msg}")
    return msg


def s_ingress(a):
    """Build the shell-user image; check what RunMicrovm and
    CreateMicrovmImage refuse; run one microVM per ingress choice and check
    what GetMicrovm reports, which shell tokens are minted, and what the
    proxy lets through with each token kind."""
    arn = build_image(a["name"], "shell-user")
    bogus = conn("WARP_INGRESS")
    validation(client.run_microvm, [bogus], imageIdentifier=arn, ingressNetworkConnectors=[bogus])
    validation(client.run_microvm, ["NO_INGRESS"], imageIdentifier=arn,
               ingressNetworkConnectors=[conn("NO_INGRESS"), conn("HTTP_INGRESS")])
    validation(client.run_microvm, [conn("HTTP_INGRESS")], imageIdentifier=arn,
               egressNetworkConnectors=[conn("HTTP_INGRESS")])
    malformed = "arn:aws:lambda:us-east-1:aws:network-connector:INTERNET_EGRESS"
    validation(client.run_microvm, [malformed], imageIdentifier=arn, egressNetworkConnectors=[malformed])
    # This server was started with --no-egress.
    validation(client.run_microvm, ["no egress network"], imageIdentifier=arn,
               egressNetworkConnectors=[conn("INTERNET_EGRESS")])
    validation(client.create_microvm_image, [malformed], name=a["name"] + "-x",
               baseImageArn=f"arn:aws:lambda:{REGION}:aws:microvm-image:debian-12-python",
               buildRoleArn="arn:aws:iam::123456789012:role/hearth-build",
               codeArtifact={"uri": "file:///nonexistent.zip"}, egressNetworkConnectors=[malformed])

    idle = {"maxIdleDurationSeconds": int(a["idle"]), "suspendedDurationSeconds": 0,
            "autoResumeEnabled": True}
    shell = run(arn, ingressNetworkConnectors=[conn("SHELL_INGRESS")], idlePolicy=idle)
    plain = run(arn)
    none = run(arn, ingressNetworkConnectors=[conn("NO_INGRESS")])
    both = run(arn, ingressNetworkConnectors=[conn("ALL_INGRESS")])

    check(state_of(shell["microvmId"]).get("ingressNetworkConnectors") == [conn("SHELL_INGRESS")],
          f"GetMicrovm reports the ingress connectors: {state_of(shell['microvmId'])}")
    check(state_of(none["microvmId"]).get("ingressNetworkConnectors") == [conn("NO_INGRESS")],
          "GetMicrovm reports NO_INGRESS")
    check(not state_of(plain["microvmId"]).get("ingressNetworkConnectors"),
          "none given, none reported")
    check(state_of(plain["microvmId"]).get("egressNetworkConnectors") is None, "no egress reported")

    for m in (plain, none):
        validation(client.create_microvm_shell_auth_token, ["SHELL_INGRESS", "ALL_INGRESS"],
                   microvmIdentifier=m["microvmId"], expirationInMinutes=10)
    code, _, status = error_of(client.create_microvm_shell_auth_token,
                               microvmIdentifier="mvm-doesnotexist0000", expirationInMinutes=10)
    check((code, status) == ("ResourceNotFoundException", 404), f"unknown microVM: {code}")
    stok = shell_token(shell["microvmId"])
    btok = shell_token(both["microvmId"])

    # HTTP by ingress.
    refused(get(shell, "/", token(shell["microvmId"])), 403, ["HTTP_INGRESS"])
    refused(get(none, "/", token(none["microvmId"])), 403, ["HTTP_INGRESS"])
    for m in (plain, both):
        r = get(m, "/", token(m["microvmId"]))
        check(r.status_code == 200 and "made by appuser" in r.text, f"HTTP reaches {m['microvmId']}: {r.status_code} {r.text}")
    say("ingress connectors decide HTTP")

    # Token kinds: a shell token opens no HTTP port, an HTTP token no shell.
    refused(get(shell, "/", stok), 403, ["shell token"], secret=stok)
    ws = WebSocket(shell, ws_protocols(stok, port=8080, app=()), path="/")
    check(ws.status == 403, f"a shell token with a port is refused: {ws.status} {ws.body!r}")
    ws = WebSocket(plain, ws_protocols(token(plain["microvmId"]), app=()), path="/")
    check(ws.status != 101 and b"session_init" not in ws.body,
          f"an HTTP token's WebSocket goes to the app, not a shell: {ws.status} {ws.body!r}")
    check("SimpleHTTP" in ws.headers.get("server", ""), f"the app answered it: {ws.headers}")
    ws = WebSocket(both, ws_protocols(btok, app=()), path="/")
    check(ws.status == 101, f"the shell opens with ALL_INGRESS: {ws.status} {ws.body!r}")
    check(ws.headers.get("sec-websocket-protocol") == "lambda-microvms", f"marker only: {ws.headers}")
    opcode, data = ws.recv()
    init = json.loads(data)
    check(opcode == 0x1 and init["type"] == "session_init" and len(init["session_id"]) == 36,
          f"the first frame is session_init: {opcode} {data!r}")
    ws.close()
    say("token kinds checked")
    emit(account=shell["imageArn"].split(":")[4],
         shell=shell["microvmId"], shellEndpoint=shell["endpoint"], shellToken=stok,
         both=both["microvmId"], bothEndpoint=both["endpoint"], bothToken=btok,
         none=none["microvmId"], noneEndpoint=none["endpoint"], plain=plain["microvmId"])


def s_suspend(a):
    client.suspend_microvm(microvmIdentifier=a["id"])
    emit(state=state_of(a["id"])["state"])


def s_resume(a):
    client.resume_microvm(microvmIdentifier=a["id"])
    emit(state=state_of(a["id"])["state"])


def s_state(a):
    emit(state=state_of(a["id"])["state"])


def s_egress_setup(a):
    """The probe image; microVMs with INTERNET_EGRESS (two, at once) and one
    without, all with the shell; GetMicrovm reports the egress connector."""
    arn = build_image(a["name"], "probe")
    ingress = [conn("ALL_INGRESS")]
    with_egress = [run(arn, ingressNetworkConnectors=ingress,
                       egressNetworkConnectors=[conn("INTERNET_EGRESS")]) for _ in range(2)]
    without = run(arn, ingressNetworkConnectors=ingress)
    for m in with_egress:
        got = state_of(m["microvmId"]).get("egressNetworkConnectors")
        check(got == [conn("INTERNET_EGRESS")], f"GetMicrovm reports the egress connector: {got}")
    emit(egress=[{"id": m["microvmId"], "endpoint": m["endpoint"], "token": shell_token(m["microvmId"])}
                 for m in with_egress],
         plain={"id": without["microvmId"], "endpoint": without["endpoint"],
                "token": shell_token(without["microvmId"])})


SCENARIOS = {
    "ingress": s_ingress,
    "suspend": s_suspend,
    "resume": s_resume,
    "state": s_state,
    "egress-setup": s_egress_setup,
}

if __name__ == "__main__":
    scenario = sys.argv[1]
    args = dict(kv.split("=", 1) for kv in sys.argv[2:])
    SCENARIOS[scenario](args)
