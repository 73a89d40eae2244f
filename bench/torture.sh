#!/usr/bin/env bash
# Crash torture at length, in release mode: N SIGKILLs of a running server while two
# publishers upload (scp, scp -O) and import over ssh and an admin removes images and changes
# aliases, then N SIGKILLs of the local CLI in the middle of import, remove and prune. After
# every kill the tree is checked whole (tests/torture.rs says what that means).
#
#   bench/torture.sh [N]        (default 200)
#
# Prints, per test: the seed, then kills, how many landed while a command ran, the time and
# what was cut. Replay a run with TORTURE_SEED=<seed> (thread timing still varies).
set -euo pipefail

kills=${1:-200}
if ! [[ $kills =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bench/torture.sh [N]   (N kills per test, a positive number)" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

for tool in ssh scp mksquashfs xz; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install openssh-client squashfs-tools xz-utils)" >&2; exit 1; }
done

echo "building the release test binaries..." >&2
cargo test --release --test main --no-run

start=$(date +%s)
# One test at a time: the two would compete for the CPU and blur each other's timing.
TORTURE_KILLS=$kills cargo test --release --quiet --test main torture:: -- --nocapture --test-threads 1
end=$(date +%s)
echo "bench/torture.sh $kills: both tests passed in $((end - start)) s" >&2
