#!/usr/bin/env bash
# Quick start, step 1: set everything up and run the reference scenario as
# far as Hearth goes today: build the Flask example into an image through
# the API (a builder microVM runs its Dockerfile, pip-installs from PyPI,
# starts gunicorn and snapshots it), then the engine demo (cold boot,
# snapshot, clones, suspend, resume). Running that image behind the proxy
# is the next issue.
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
API="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"])' "$SERVE_OUT")"

log "hearth image create flask-hello --code examples/flask-hello --follow"
hearth --data-dir "$DEMO_DATA" image create flask-hello --code examples/flask-hello \
  --endpoint-url "$API" --follow
hearth --data-dir "$DEMO_DATA" image ls --endpoint-url "$API"
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; trap - EXIT

log "hearth demo"
hearth demo
