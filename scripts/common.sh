# Shared by quickstart.sh, test.sh and .ci/run. Source it; do not run it.
set -euo pipefail
HEARTH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HEARTH_ROOT"

log() { printf '\n==> %s\n' "$*" >&2; }

# The guest agent is PID 1 of every microVM: a static binary (no musl
# toolchain here, so glibc with crt-static).
build_agent() {
  log "building the static guest agent"
  RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --quiet --profile release-agent -p hearth-agent --target x86_64-unknown-linux-gnu
  export HEARTH_AGENT="$HEARTH_ROOT/target/x86_64-unknown-linux-gnu/release-agent/hearth-agent"
}

# hearth and the per-microVM supervisor it starts beside itself.
build_hearth() {
  log "building hearth and hearth-supervisor"
  cargo build --quiet --release -p hearth -p hearth-supervisor
  export PATH="$HEARTH_ROOT/target/release:$PATH"
  export HEARTH_SUPERVISOR="$HEARTH_ROOT/target/release/hearth-supervisor"
}

# Host packages, kernel, initramfs and base images, cached under
# ~/.cache/hearth (HEARTH_CACHE) by input hash: a second run does nothing.
setup_artifacts() {
  log "hearth setup"
  hearth setup --agent "$HEARTH_AGENT" >/dev/null
}

# The real AWS clients the API tests drive: aws CLI, boto3 and
# capo-lambda-microvms (validates nothing client-side), and moto's S3
# server (the s3:// code artifact tests run against it), in a venv.
setup_pyenv() {
  export HEARTH_PYENV="$HEARTH_ROOT/target/pyenv"
  if ! "$HEARTH_PYENV/bin/python" -c 'import boto3, capo_lambda_microvms, moto.server, requests' 2>/dev/null \
     || [ ! -x "$HEARTH_PYENV/bin/aws" ]; then
    log "installing the AWS clients (awscli, boto3, capo-lambda-microvms) and moto into $HEARTH_PYENV"
    python3 -m venv "$HEARTH_PYENV"
    "$HEARTH_PYENV/bin/pip" install --quiet --disable-pip-version-check \
      'awscli>=1.46' 'boto3>=1.44' 'capo-lambda-microvms>=0.10' 'moto[server]>=5.1' \
      'requests>=2.31'
  fi
}
