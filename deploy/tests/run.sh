#!/usr/bin/env bash
# The container suite: builds the FROM-scratch image from this checkout (dev profile, statically
# linked), then runs the compose scenarios of deploy/tests/tests/compose.rs one after the other on
# a real Docker network. Needs a Docker engine with Compose (`docker compose` or `docker-compose`).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export KILN_IMAGE="${KILN_IMAGE:-kiln:test}"

SECONDS=0
TAG="$KILN_IMAGE" PROFILE="${PROFILE:-dev}" deploy/build-image.sh
echo "container suite: image built in ${SECONDS} s"
docker image ls "$KILN_IMAGE" --format 'image {{.Repository}}:{{.Tag}} {{.Size}}'

# `--workspace --test compose` rather than `-p kiln-deploy-tests`: the same feature resolution as
# `cargo test --workspace`, so nothing is rebuilt.
cargo test --workspace --test compose -- --ignored --test-threads 1 --nocapture
