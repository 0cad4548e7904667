#!/bin/sh
# Build `wirecheck`, a decoder made of the REAL upstream types (agent-sdk-core, unmodified sources).
#   build.sh UPSTREAM_GIT_DIR [REV] [BUILD_DIR]
# UPSTREAM_GIT_DIR: a clone or bare mirror of heyclawdia/clawdia_sdk (REV defaults to adad005).
# Needs rustc/cargo >= 1.85 (edition 2024; the machine's rustup toolchain, NOT Debian 12's rustc 1.63)
# and Debian's vendored crates (no crates.io access): serde 1.0.152, serde_json 1.0.87, sha2 0.10.5,
# thiserror 1.0.38 under /usr/share/cargo/registry. Cold build ~35 s on 2 cores.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
GIT=${1:?usage: build.sh UPSTREAM_GIT_DIR [REV] [BUILD_DIR]}
REV=${2:-adad005}
OUT=${3:-/tmp/wirecheck-build}
if [ ! -d /usr/share/cargo/registry/serde-1.0.152 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q librust-serde-dev librust-serde-derive-dev \
        librust-serde-json-dev librust-sha2-dev librust-thiserror-dev
fi
rm -rf "$OUT" && mkdir -p "$OUT/src" "$OUT/.cargo" "$OUT/agent-sdk-core"
cp "$HERE/Cargo.toml" "$OUT/" && cp "$HERE/src/main.rs" "$OUT/src/" && cp "$HERE/.cargo/config.toml" "$OUT/.cargo/"
git --git-dir="$GIT" archive "$REV" crates/agent-sdk-core/src | tar -x -C "$OUT/agent-sdk-core" --strip-components=2
# the only change to upstream: its manifest (workspace keys inlined, thiserror "2" -> "1")
cp "$HERE/agent-sdk-core.Cargo.toml" "$OUT/agent-sdk-core/Cargo.toml"
cd "$OUT" && cargo build
echo "built $OUT/target/debug/wirecheck"
