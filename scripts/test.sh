#!/usr/bin/env bash
# Quick start, step 2: the full test suite (unit, black-box and end-to-end
# tests that boot real microVMs). Fails, never skips, when a dependency is
# missing.
source "$(dirname "$0")/common.sh"
command -v cargo-nextest >/dev/null || { log "installing cargo-nextest"; cargo install --locked cargo-nextest; }
build_agent
build_hearth
setup_artifacts
setup_pyenv
# Tools the tests drive as real clients: curl (through the endpoint proxy).
command -v curl >/dev/null || { log "installing curl"; apt-get install -y -q curl >/dev/null; }
log "format and lint"
cargo fmt --all --check
cargo clippy --quiet --workspace --all-targets -- -D warnings
log "tests"
cargo nextest run --workspace --profile ci "$@"
