#!/usr/bin/env bash
# Import speed against the cost of hashing, and rebuild speed of a large catalog.
#
#   bench/import.sh [SIZE_MIB] [VERSIONS]       (defaults: 1024 and 10000)
#
# 1. Builds a split image with a SIZE_MIB squashfs root (random, incompressible), then times,
#    warm cache, median of 3: `openssl dgst -sha256 root`, our `import` (copy, the default) and
#    `import --move`. Prints each import's wall time as a ratio to openssl's. Target: <= 1.1.
#    A copy must also write the data durably, so `dd conv=fsync` is timed too: on disks slower
#    than sha256 (~1 GB/s) it, not hashing, bounds a copying import.
# 2. Writes a catalog record of VERSIONS versions and times `rebuild` (median of 5).
#    Target: < 0.3 s for 10,000 versions.
set -euo pipefail

size_mib=${1:-1024}
versions=${2:-10000}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/sss-bench-import.XXXXXX)
trap 'rm -rf "$work"' EXIT

for tool in openssl mksquashfs xz python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install openssl squashfs-tools xz-utils python3)" >&2; exit 1; }
done

echo "building the release binary..." >&2
(cd "$here" && cargo build --release --quiet)
bin="${CARGO_TARGET_DIR:-$here/target}/release/simplestream-server"

# Wall time of a command in seconds (3 decimals).
seconds() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null
    end=$(date +%s.%N)
    echo "$start $end" | awk '{printf "%.3f", $2 - $1}'
}

median() {
    sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

echo "building a ${size_mib} MiB split image..." >&2
mkdir -p "$work/meta" "$work/tree"
cat >"$work/meta/metadata.yaml" <<EOF
architecture: x86_64
creation_date: $(date +%s)
properties:
  os: bench
  release: "1"
  variant: default
  description: benchmark image
EOF
tar -C "$work/meta" -cJf "$work/lxd.tar.xz" metadata.yaml
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/tree/blob"
mksquashfs "$work/tree" "$work/root.squashfs" -noappend -quiet -no-progress -noI -noD -noF -noX >/dev/null
rm -rf "$work/tree"
cat "$work/root.squashfs" >/dev/null # warm the page cache

openssl_times=() dd_times=() copy_times=() move_times=()
# Each timed command starts on a quiet disk: `sync` first, so that the writeback of the last
# one's deletions does not land in the next one's time.
for round in 1 2 3; do
    sync
    openssl_times+=("$(seconds openssl dgst -sha256 "$work/root.squashfs")")
    sync
    dd_times+=("$(seconds dd if="$work/root.squashfs" of="$work/dd.copy" bs=1M conv=fsync status=none)")
    rm -f "$work/dd.copy"
    rm -rf "$work/data"
    sync
    copy_times+=("$(seconds "$bin" --data-dir "$work/data" import "$work/lxd.tar.xz" "$work/root.squashfs")")
    rm -rf "$work/data"
    ln -f "$work/lxd.tar.xz" "$work/m.tar.xz"
    ln -f "$work/root.squashfs" "$work/r.squashfs"
    sync
    move_times+=("$(seconds "$bin" --data-dir "$work/data" import --move "$work/m.tar.xz" "$work/r.squashfs")")
    echo "round $round: openssl ${openssl_times[-1]} s, dd ${dd_times[-1]} s, import ${copy_times[-1]} s, import --move ${move_times[-1]} s" >&2
done
openssl_s=$(printf '%s\n' "${openssl_times[@]}" | median)
dd_s=$(printf '%s\n' "${dd_times[@]}" | median)
copy_s=$(printf '%s\n' "${copy_times[@]}" | median)
move_s=$(printf '%s\n' "${move_times[@]}" | median)

echo "writing a catalog record of $versions versions..." >&2
rm -rf "$work/data"
"$bin" --data-dir "$work/data" list >/dev/null
python3 - "$work/data/state/catalog.json" "$versions" <<'EOF'
import json, sys
path, versions = sys.argv[1], int(sys.argv[2])
per_product = 100
products = {}
for v in range(versions):
    p, serial_n = divmod(v, per_product)
    pid = f"bench{p}:1:amd64:default"
    product = products.setdefault(pid, {"os": f"bench{p}", "release": "1", "arch": "amd64", "variant": "default",
                                        "aliases": [f"bench{p}/1"], "requirements": {}, "versions": {}})
    serial = f"2025{1 + serial_n // 28:02d}{1 + serial_n % 28:02d}_0000"
    h = lambda tag: f"{v:016x}{tag:048x}"
    base = f"images/bench{p}/1/amd64/default/{serial}"
    prov = {"by": "bench", "at": 1764244800, "sources": ["lxd.tar.xz", "root.squashfs"]}
    product["versions"][serial] = {
        "description": "bench", "created": 1764244800,
        "files": {"layout": "split",
                  "metadata": {"path": f"{base}/metadata.tar.xz", "size": 1000, "sha256": h(1)},
                  "roots": {"container": {"kind": "squashfs",
                                          "file": {"path": f"{base}/root.squashfs", "size": 100000000, "sha256": h(2)},
                                          "combined_sha256": h(3), "imported": prov}}}}
json.dump({"format": 1, "updated": 1764244800, "products": products, "retired": []}, open(path, "w"))
EOF
rebuild_times=()
for _ in 1 2 3 4 5; do
    rebuild_times+=("$(seconds "$bin" --data-dir "$work/data" rebuild)")
done
rebuild_s=$(printf '%s\n' "${rebuild_times[@]}" | median)
images_json_mib=$(du -m "$work/data/www/streams/v1/images.json" | cut -f1)

echo
echo "import of a ${size_mib} MiB split image (median of 3, warm cache)"
printf '  openssl dgst -sha256      %6.3f s\n' "$openssl_s"
printf '  dd conv=fsync (durable copy, the disk floor for a copy) %6.3f s\n' "$dd_s"
printf '  import (copy)             %6.3f s   ratio %.2f  (target <= 1.1; vs dd: %.2f)\n' "$copy_s" \
    "$(echo "$copy_s $openssl_s" | awk '{print $1/$2}')" "$(echo "$copy_s $dd_s" | awk '{print $1/$2}')"
printf '  import --move             %6.3f s   ratio %.2f  (target <= 1.1)\n' "$move_s" "$(echo "$move_s $openssl_s" | awk '{print $1/$2}')"
echo "rebuild of $versions versions (median of 5; images.json ${images_json_mib} MiB)"
printf '  rebuild                   %6.3f s   (target < 0.3 s)\n' "$rebuild_s"
