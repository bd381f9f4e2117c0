#!/usr/bin/env bash
# Runs every test: unit tests (sans-IO pipeline, wire golden bytes, fuzz smoke), the config
# checks, integration tests with namespaces/taps/iperf3/tcpdump, QEMU guests (virtio-net
# offloads and 802.1Q trunks), FRR peers, and a two-minute soak. Needs root and /dev/net/tun; installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
# Root runs it as it is; another user through sudo, where there is one.
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null && exec sudo -E bash "$0" "$@"
    echo "scripts/test.sh needs root (taps, namespaces) (and there is no sudo here)" >&2
    exit 1
fi
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

# The QEMU guest image (Debian kernel + busybox initramfs), cached across runs.
bash scripts/lib/guest-image.sh

# --all-targets also builds the benchmarks and runs each once as a test.
log=$(mktemp /tmp/vrouter-test-log.XXXXXX)
trap 'rm -f "$log"' EXIT
rc=0
cargo test --all-targets --locked --no-fail-fast 2>&1 | tee "$log" || rc=$?
# The cargo-fuzz targets must keep compiling (running them needs nightly's libFuzzer flags).
(cd fuzz && cargo check --locked --target-dir ../target/fuzz -q) || { echo "fuzz targets do not build"; rc=1; }
# A two-minute soak (scripts/soak.sh: mixed load while the config changes every 5 s) on the
# binary the tests just built; NO_SOAK=1 skips it.
if [ -z "${NO_SOAK:-}" ]; then
    SOAK_SECS=${SOAK_SECS:-120} VR=$PWD/target/debug/vrouter bash scripts/soak.sh || { echo "soak failed"; rc=1; }
fi
sum() { grep -oE "test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed" "$log" | awk -v f="$1" '{ s += $f } END { print s + 0 }'; }
echo "$(sum 4) passed, $(sum 6) failed"
exit "$rc"
