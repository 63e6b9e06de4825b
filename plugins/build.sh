#!/usr/bin/env bash
# Builds the first-party plugins and the tutorial transform (examples/hello-transform) to
# WebAssembly with Debian's Rust 1.63 (the toolchain here that has a wasm32 standard library),
# checks the modules against ABI v1, and copies them to plugins/dist/<name>.wasm.
#
#   plugins/build.sh            build, check, run native tests, smoke-test under Node if present
#   SKIP_TESTS=1 plugins/build.sh   only build and check
#
# Steps: wasm32-unknown-unknown release build (the shipped modules) -> wasm32-wasi build (proves
# the WASI variant compiles) -> dist/ copies without the linker's __data_end/__heap_base exports
# -> import/export check (tools/check_wasm.py) -> native `cargo test` and clippy with rustup's
# cargo ->
# end-to-end smoke test of dist/*.wasm under Node's WebAssembly engine (tools/smoke.mjs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
example="$repo/examples/hello-transform"
dist="$here/dist"
debian_rustc="${DEBIAN_RUSTC:-/usr/bin/rustc}"
debian_cargo="${DEBIAN_CARGO:-/usr/bin/cargo}"
# The caller's CARGO_TARGET_DIR (e.g. the root workspace's) must not redirect these builds.
unset CARGO_TARGET_DIR

die() {
    echo "build.sh: $*" >&2
    exit 1
}

install_hint="install Debian's Rust with the wasm32 standard library and its linker: apt-get install rustc cargo libstd-rust-dev-wasm32 lld-14"
[ -x "$debian_rustc" ] || die "$debian_rustc not found; $install_hint"
[ -x "$debian_cargo" ] || die "$debian_cargo not found; $install_hint"
sysroot="$("$debian_rustc" --print sysroot)"
for target in wasm32-unknown-unknown wasm32-wasi; do
    ls "$sysroot/lib/rustlib/$target/lib/"libstd-*.rlib >/dev/null 2>&1 \
        || die "no $target standard library under $sysroot/lib/rustlib; $install_hint"
done
# rustc links wasm32 with rust-lld (Debian: lld-14, only recommended by the wasm32 std package).
[ -x "$(dirname "$debian_rustc")/rust-lld" ] || die "$(dirname "$debian_rustc")/rust-lld is missing or dangling; $install_hint"
command -v python3 >/dev/null || die "python3 is needed for tools/check_wasm.py"

# Debian's cargo reads Cargo.lock version 3 only; the committed lock files are that version.
wasm_build() { # DIR TARGET
    echo "== $(basename "$1"): cargo build --release --target $2 (rustc $("$debian_rustc" --version | cut -d' ' -f2))"
    (cd "$1" && RUSTC="$debian_rustc" "$debian_cargo" build --offline --release --target "$2" --target-dir "$1/target")
}

for target in wasm32-unknown-unknown wasm32-wasi; do
    wasm_build "$here" "$target"
    wasm_build "$example" "$target"
done

echo "== WASI variants (built to prove they compile; the host also accepts them)"
python3 "$here/tools/check_wasm.py" --wasi \
    "$here"/target/wasm32-wasi/release/runnel_{json_filter,json_project,router,dedup}.wasm \
    "$example/target/wasm32-wasi/release/hello_transform.wasm"

mkdir -p "$dist"
rm -f "$dist"/*.wasm
for name in json-filter json-project router dedup; do
    python3 "$here/tools/check_wasm.py" --strip \
        "$here/target/wasm32-unknown-unknown/release/runnel_${name//-/_}.wasm" "$dist/$name.wasm"
done
python3 "$here/tools/check_wasm.py" --strip \
    "$example/target/wasm32-unknown-unknown/release/hello_transform.wasm" "$dist/hello-transform.wasm"

# The C example of sdk/ABI.md, when a clang that targets wasm32 (with wasm-ld) is installed.
c_example="$repo/examples/c-passthrough/passthrough.c"
python3 - "$repo/sdk/ABI.md" "$c_example" <<'PY' || die "the C example in sdk/ABI.md differs from examples/c-passthrough/passthrough.c"
import sys
abi, source = (open(p).read() for p in sys.argv[1:])
block = abi.split("```c\n", 1)[1].split("```", 1)[0]
sys.exit(0 if block == source else 1)
PY
python3 - "$repo/sdk/README.md" "$example/src/lib.rs" <<'PY' || die "the tutorial code in sdk/README.md (step 3) is not in examples/hello-transform/src/lib.rs"
import sys
readme, source = (open(p).read() for p in sys.argv[1:])
block = readme.split("### 3. The transform", 1)[1].split("```rust\n", 1)[1].split("```", 1)[0]
sys.exit(0 if block in source else 1)
PY
clang_bin=""
for candidate in clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14; do
    if command -v "$candidate" >/dev/null; then clang_bin="$candidate"; break; fi
done
if [ -n "$clang_bin" ] && "$clang_bin" --target=wasm32 -O2 -nostdlib -Wall -Wextra -Werror -Wl,--no-entry \
    -o "$dist/c-passthrough.wasm" "$c_example"; then
    echo "== built the C example with $clang_bin"
else
    rm -f "$dist/c-passthrough.wasm"
    echo "== no clang able to target wasm32: skipping the C example"
fi

echo "== dist/ (wasm32-unknown-unknown): exports and imports against ABI v1"
python3 "$here/tools/check_wasm.py" "$dist"/*.wasm

if [ "${SKIP_TESTS:-0}" != 1 ]; then
    # Native tests with rustup's stable cargo when there is one (the SDK's harness runs the
    # transforms without WASM); otherwise Debian's cargo runs them too.
    native_cargo="$(command -v cargo || true)"
    [ -x "$HOME/.cargo/bin/cargo" ] && native_cargo="$HOME/.cargo/bin/cargo"
    if [ -z "$native_cargo" ] || [ "$native_cargo" = "$debian_cargo" ]; then
        native_cargo="$debian_cargo"
        export RUSTC="$debian_rustc"
        [ -x /usr/bin/rustdoc ] && export RUSTDOC=/usr/bin/rustdoc
    fi
    for dir in "$here" "$example"; do
        echo "== $(basename "$dir"): native cargo test ($native_cargo)"
        (cd "$dir" && "$native_cargo" test --offline --target-dir "$here/target-native")
        if "$native_cargo" clippy --version >/dev/null 2>&1; then
            echo "== $(basename "$dir"): cargo clippy --all-targets -- -D warnings"
            (cd "$dir" && "$native_cargo" clippy --offline --all-targets --target-dir "$here/target-native" -- -D warnings)
        fi
    done
    if command -v node >/dev/null; then
        echo "== smoke test of dist/*.wasm under Node $(node --version)"
        node "$here/tools/smoke.mjs" "$dist"
    else
        echo "== node not found: skipping the WebAssembly smoke test"
    fi
fi

echo "== built:"
ls -l "$dist"/*.wasm
