#!/usr/bin/env bash
# Run every test: the Rust unit and integration tests, then the black-box suite in tests/python
# that starts the real `runnel` binary and talks to it with real Kafka clients (kcat, librdkafka
# through confluent-kafka, kafka-python).
#
#   tests/run.sh                  # everything
#   tests/run.sh -k kcat          # extra arguments go to pytest
#
# Environment:
#   CARGO_TARGET_DIR        where cargo builds (default: target/ in the repo)
#   RUNNEL_VENV             the Python venv for the clients (default: ~/.cache/runnel/venv)
#   RUNNEL_SKIP_RUST_TESTS  set to 1 to skip `cargo test` (quicker loop on the Python suite)
#   RUNNEL_TEST_SEED        seed for the randomized tests (crash points, hostile bytes)
#
# On a fresh Debian machine as root it installs what is missing (kcat, python3-venv, nodejs,
# postgresql) with
# apt, and kafkajs with npm into ~/.cache/runnel/node.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

log() { printf '==> %s\n' "$*" >&2; }

# --- System packages ---------------------------------------------------------------------------
# `apt-get update` runs at most once, and only when something is missing.
apt_updated=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        log "missing system packages: $*; install them (as root: apt-get install $*)"
        exit 1
    fi
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v kcat >/dev/null 2>&1; then
    apt_install kcat
fi

# The connector tests start a throwaway PostgreSQL (initdb + pg_ctl as the postgres user) and read
# it with psql.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1 \
    || ! command -v runuser >/dev/null 2>&1; then
    apt_install postgresql postgresql-client util-linux
fi

# kafkajs (a client that never uses flexible versions) runs on Node.js.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
node_dir="${RUNNEL_NODE_DIR:-$HOME/.cache/runnel/node}"
export RUNNEL_NODE_MODULES="$node_dir/node_modules"
if [ ! -f "$RUNNEL_NODE_MODULES/kafkajs/package.json" ]; then
    log "npm install kafkajs@2.2.4 into $node_dir"
    mkdir -p "$node_dir"
    (cd "$node_dir" && npm install --no-audit --no-fund --silent kafkajs@2.2.4 >/dev/null)
fi

python_bin="${PYTHON:-python3}"
if ! command -v "$python_bin" >/dev/null 2>&1; then
    apt_install python3 python3-venv
    python_bin=python3
fi
if ! "$python_bin" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
fi

# rustup's toolchain first: Debian's cargo 1.65 (installed for the wasm32 plugin builds) is too
# old for the workspace and must not shadow it.
if [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

# --- Python venv with the pinned clients ------------------------------------------------------
# Lives outside the clone, so a fresh clone reuses it; rebuilt when requirements.txt changes.
venv="${RUNNEL_VENV:-${HOME:-/root}/.cache/runnel/venv}"
requirements="$repo_root/tests/python/requirements.txt"
wanted_stamp="$("$python_bin" -c 'import sys; print(sys.version)' | head -n1) $(sha256sum "$requirements" | cut -d' ' -f1)"
stamp_file="$venv/.runnel-requirements"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp_file" 2>/dev/null)" != "$wanted_stamp" ]; then
    log "creating Python venv at $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python_bin" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
    printf '%s' "$wanted_stamp" >"$stamp_file"
fi

# --- Rust: one build serves the binary and the tests --------------------------------------------
# Plugins (WASM transforms) build with Debian's Rust 1.63, the toolchain here with a wasm32
# standard library; the transform tests deploy what plugins/build.sh puts in plugins/dist/.
# rustc links wasm32 with rust-lld, which Debian ships in lld-14, only *recommended* by
# libstd-rust-dev-wasm32: apt_install (--no-install-recommends) must name it, and a dangling
# /usr/bin/rust-lld link (rustc without lld-14) means it is missing.
if [ ! -x /usr/bin/rustc ] || [ ! -x /usr/bin/cargo ] || [ ! -x /usr/bin/rust-lld ] \
    || ! ls /usr/lib/rustlib/wasm32-unknown-unknown/lib/libstd-*.rlib >/dev/null 2>&1; then
    apt_install rustc cargo libstd-rust-dev-wasm32 lld-14
fi
log "plugins/build.sh (WASM plugins, their native tests)"
# Without a workspace rustc wrapper (.ci/run sets clippy-driver as one for this workspace): the
# plugins build with Debian's rustc 1.63, and build.sh runs their clippy itself.
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS bash "$repo_root/plugins/build.sh"

target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
# The `testing` profile (Cargo.toml): release semantics, opt-level 1, so that a cold build fits
# CI's time; RUNNEL_TEST_PROFILE=release tests the release build.
profile="${RUNNEL_TEST_PROFILE:-testing}"
log "cargo build --profile $profile --bins --examples (target: $target_dir)"
cargo build --profile "$profile" --bins --examples
if [ "${RUNNEL_SKIP_RUST_TESTS:-0}" != "1" ]; then
    log "cargo test --workspace --profile $profile"
    cargo test --workspace --profile "$profile"
fi

runnel_bin="$target_dir/$profile/runnel"
if [ ! -x "$runnel_bin" ]; then
    log "no binary at $runnel_bin after the build"
    exit 1
fi

# --- Black-box suite --------------------------------------------------------------------------
log "pytest tests/python (RUNNEL_BIN=$runnel_bin)"
export RUNNEL_BIN="$runnel_bin"
# Keep the clone clean: no __pycache__ or .pytest_cache inside it.
export PYTHONDONTWRITEBYTECODE=1
set +e
"$venv/bin/python" -m pytest "$repo_root/tests/python" -p no:cacheprovider -ra "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    log "pytest collected no tests: treating as a failure"
    exit 1
fi
exit "$status"
