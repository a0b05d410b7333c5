#!/usr/bin/env bash
# Quick start, step 1: set everything up and run the reference scenario.
source "$(dirname "$0")/common.sh"
build_agent
build_hearth
setup_artifacts
log "hearth demo"
hearth demo
