#!/usr/bin/env bash
# Quick start, step 1: set everything up and run the reference scenario:
# build the Flask example into an image through the API (a builder microVM
# runs its Dockerfile, pip-installs from PyPI, starts gunicorn and
# snapshots it), run a microVM of it with the announcement's idle policy,
# call it through the endpoint proxy, suspend it, call it again (it resumes
# on the request, its memory intact), terminate it; with timings.
source "$(dirname "$0")/common.sh"
build_agent
build_hearth
setup_artifacts

DEMO_DATA="$(mktemp -d /tmp/hearth-quickstart.XXXXXX)"
SERVE_OUT="$DEMO_DATA/serve.json"
log "hearth serve (data dir $DEMO_DATA)"
hearth --data-dir "$DEMO_DATA" serve --listen 127.0.0.1:0 --proxy-listen 127.0.0.1:0 \
  --egress-netns hearth-quickstart --egress-link-net 10.213.1.0 \
  >"$SERVE_OUT" 2>"$DEMO_DATA/serve.log" &
SERVE_PID=$!
trap 'kill "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$SERVE_OUT" ] && break; sleep 0.1; done
[ -s "$SERVE_OUT" ] || { cat "$DEMO_DATA/serve.log" >&2; exit 1; }
json() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
API="$(json "$(cat "$SERVE_OUT")" api)"
h() { hearth --data-dir "$DEMO_DATA" "$@" --endpoint-url "$API"; }
ms() { date +%s%3N; }

log "hearth image create flask-hello --code examples/flask-hello --follow"
h image create flask-hello --code examples/flask-hello --follow
h image ls

log "hearth run flask-hello --idle-seconds 900 --suspended-seconds 300 (auto-resume on)"
RUN="$(h run flask-hello --idle-seconds 900 --suspended-seconds 300 --json)"
ID="$(json "$RUN" microvmId)"
echo "$ID: $(json "$RUN" state) at $(json "$RUN" endpoint), RunMicrovm took $(json "$RUN" elapsedMs) ms"

log "hearth curl $ID /state (through the proxy, with a token)"
t0=$(ms); FIRST="$(h curl "$ID" /state)"; t1=$(ms)
echo "$FIRST   ($((t1 - t0)) ms, hearth curl included)"

log "hearth suspend $ID"
h suspend "$ID"

log "hearth curl $ID /state (resumes it on the request)"
t0=$(ms); SECOND="$(h curl "$ID" /state)"; t1=$(ms)
echo "$SECOND   ($((t1 - t0)) ms, resume included)"
python3 - "$FIRST" "$SECOND" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert a["pid"] == b["pid"], f"another process answered after the resume: {a} {b}"
assert b["requests"] == a["requests"] + 1, f"the app's memory was not kept: {a} {b}"
print(f"same process (pid {b['pid']}), its counter went on: {a['requests']} -> {b['requests']}")
PY
h get "$ID"

log "hearth terminate $ID"
h terminate "$ID"
echo "quickstart: done (data dir $DEMO_DATA; hearth demo shows the engine alone)"
