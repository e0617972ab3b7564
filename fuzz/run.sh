#!/usr/bin/env bash
# Fuzzes the relay's frame reader with libFuzzer (cargo fuzz; see README "Fuzzing").
#   fuzz/run.sh [libFuzzer options]   e.g. -max_total_time=60 (CI), -runs=10000000
# Installs cargo-fuzz under $WSGATE_CACHE/tools once. cargo-fuzz wants nightly for
# -Zsanitizer; RUSTC_BOOTSTRAP=1 lets the stable toolchain take it (its rust-std ships
# the sanitizer runtimes). New corpus entries go to $WSGATE_CACHE/fuzz-corpus, the
# checked-in seeds (fuzz/corpus/frames) are read only. A crash exits non-zero and
# leaves the input in fuzz/artifacts/frames/.
set -euo pipefail
cd "$(dirname "$0")/.."
WSGATE_CACHE=${WSGATE_CACHE:-/var/cache/wsgate}
tools="$WSGATE_CACHE/tools"
export PATH="$tools/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null; then
  env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked --root "$tools"
fi
corpus="$WSGATE_CACHE/fuzz-corpus/frames"
mkdir -p "$corpus"
RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir "$WSGATE_CACHE/target-fuzz" frames \
  "$corpus" fuzz/corpus/frames -- "$@"
