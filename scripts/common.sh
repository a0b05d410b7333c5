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

build_hearth() {
  log "building hearth"
  cargo build --quiet --release -p hearth
  export PATH="$HEARTH_ROOT/target/release:$PATH"
}

# Host packages, kernel, initramfs and base images, cached under
# ~/.cache/hearth (HEARTH_CACHE) by input hash: a second run does nothing.
setup_artifacts() {
  log "hearth setup"
  hearth setup --agent "$HEARTH_AGENT" >/dev/null
}
