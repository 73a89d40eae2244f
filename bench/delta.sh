#!/usr/bin/env bash
# Deltas: ours against `xdelta3 -e -9 -s` (what upstream image builders run) on a realistic pair.
#
#   bench/delta.sh [SIZE_MIB] [CHANGED_PERCENT]        (defaults: 1024 and 2)
#   PAIR=DIR bench/delta.sh                            (the pair DIR/v1.squashfs, DIR/v2.squashfs)
#
# Builds a SIZE_MIB directory tree from files under /usr (hard links where it can), squashes it (mksquashfs -comp xz,
# as distrobuilder does; COMP=gzip to build faster), changes CHANGED_PERCENT of the files
# (bytes rewritten in the middle, a tail appended: a package upgrade's shape) and squashes it
# again. Then:
# - ours: `import` of the second build, which waits for its delta, timed and measured (peak
#   RSS) with /usr/bin/time; the same import with --no-delta into another catalog is timed
#   too, so the difference is the delta's own time;
# - xdelta3 -e -9 -s on the same pair, timed and measured the same way;
# - both deltas applied with Debian's `xdelta3 -d` must rebuild the second build exactly;
# - the bytes a refresh downloads (metadata + delta) against a full download (metadata + root).
# Goals: size and time at most 1.0x xdelta3's; refresh bytes under 10% of the full root.
# Not a timed test: the machine may be shared, so run it twice and read ranges.
set -euo pipefail

size_mib=${1:-1024}
changed_percent=${2:-2}
comp=${COMP:-xz}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /var/tmp/sss-bench-delta.XXXXXX)
trap 'rm -rf "$work"' EXIT

for tool in mksquashfs xdelta3 /usr/bin/time python3 tar; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install squashfs-tools xdelta3 time python3)" >&2; exit 1; }
done


# Runs a command under /usr/bin/time; prints "<seconds> <peak RSS KiB>".
measure() {
    local report="$work/time.txt"
    /usr/bin/time -f '%e %M' -o "$report" "$@" >/dev/null
    cat "$report"
}

if [ -n "${PAIR:-}" ]; then
    # A pair built before (v1.squashfs and v2.squashfs in $PAIR): the same measurement
    # without the squashing, which takes most of the time on a small machine.
    ln "$PAIR/v1.squashfs" "$PAIR/v2.squashfs" "$work/" 2>/dev/null || cp "$PAIR/v1.squashfs" "$PAIR/v2.squashfs" "$work/"
else
echo "building a ${size_mib} MiB tree from /usr..." >&2
python3 - "$work/tree" "$size_mib" <<'EOF'
import os, shutil, sys
dest, limit = sys.argv[1], int(sys.argv[2]) << 20
total = 0
for root, dirs, files in os.walk("/usr"):
    dirs.sort()
    for name in sorted(files):
        src = os.path.join(root, name)
        if os.path.islink(src) or not os.path.isfile(src):
            continue
        size = os.path.getsize(src)
        if size == 0 or total + size > limit:
            continue
        target = os.path.join(dest, os.path.relpath(src, "/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.link(src, target)  # no copy: the disk may be small; changes write new files
        except OSError:
            shutil.copyfile(src, target)
        total += size
    if total >= limit * 0.99:
        break
print(f"{total >> 20} MiB copied", file=sys.stderr)
EOF

squash() {
    nice -n 10 mksquashfs "$1" "$2" -noappend -quiet -no-progress -all-root -comp "$comp" >/dev/null
}
echo "squashing the first build ($comp)..." >&2
squash "$work/tree" "$work/v1.squashfs"

echo "changing ${changed_percent}% of the files..." >&2
python3 - "$work/tree" "$changed_percent" <<'EOF'
import os, random, sys
tree, percent = sys.argv[1], float(sys.argv[2])
files = sorted(os.path.join(r, f) for r, _, fs in os.walk(tree) for f in fs)
rng = random.Random(13)
chosen = rng.sample(files, max(1, int(len(files) * percent / 100)))
for path in chosen:
    with open(path, "rb") as f:
        data = bytearray(f.read())
    middle = len(data) // 2
    data[middle:middle + 512] = rng.randbytes(min(512, len(data) - middle))
    data += rng.randbytes(rng.randint(16, 4096))
    # A new file renamed over the old one: the tree holds hard links to /usr's files.
    with open(path + ".new", "wb") as f:
        f.write(data)
    os.replace(path + ".new", path)
print(f"{len(chosen)} of {len(files)} files changed", file=sys.stderr)
EOF
echo "squashing the second build..." >&2
squash "$work/tree" "$work/v2.squashfs"
rm -rf "$work/tree"
fi

mkdir -p "$work/meta"
for n in 1 2; do
    cat >"$work/meta/metadata.yaml" <<EOF
architecture: x86_64
creation_date: $(($(date +%s) - 86400 + n * 3600))
properties:
  os: bench
  release: "1"
  variant: default
  description: bench build $n
EOF
    tar -C "$work/meta" -cJf "$work/meta$n.tar.xz" metadata.yaml
done

echo "building the release binary..." >&2
(cd "$here" && cargo build --release --quiet)
bin="${CARGO_TARGET_DIR:-$here/target}/release/simplestream-server"

echo "ours: import of the second build, waiting for its delta..." >&2
# Imports move hard links of the builds (no copies: the disk may be small); both read every byte.
# The import command for build N into catalog DATA, from hard links that it moves.
linked_import() {
    local data=$1 n=$2
    mkdir -p "$work/$data-in"
    ln -f "$work/meta$n.tar.xz" "$work/v$n.squashfs" "$work/$data-in/"
    echo "$bin" --data-dir "$work/$data" import --move "$work/$data-in/meta$n.tar.xz" "$work/$data-in/v$n.squashfs"
}
for data in with without; do
    read -r -a command < <(linked_import "$data" 1)
    "${command[@]}" >/dev/null
done
sync
read -r -a command < <(linked_import with 2)
read -r ours_import_s ours_rss_kib < <(measure "${command[@]}")
read -r -a command < <(linked_import without 2)
read -r plain_import_s _ < <(measure "${command[@]}" --no-delta)
ours=$(find "$work/with/www/images" -name 'delta-*.vcdiff')
[[ -n $ours ]] || { echo "bench: no delta was published (too large?)" >&2; exit 1; }

echo "xdelta3 -e -9 -s on the same pair..." >&2
read -r xd_s xd_rss_kib < <(measure xdelta3 -e -9 -f -s "$work/v1.squashfs" "$work/v2.squashfs" "$work/xdelta3.vcdiff")

for delta in "$ours" "$work/xdelta3.vcdiff"; do
    xdelta3 -d -f -s "$work/v1.squashfs" "$delta" "$work/rebuilt.squashfs"
    cmp -s "$work/rebuilt.squashfs" "$work/v2.squashfs" || { echo "bench: $delta does not rebuild the second build" >&2; exit 1; }
done

root=$(stat -c %s "$work/v2.squashfs")
meta=$(stat -c %s "$work/meta2.tar.xz")
ours_size=$(stat -c %s "$ours")
xd_size=$(stat -c %s "$work/xdelta3.vcdiff")
python3 - "$root" "$meta" "$ours_size" "$xd_size" "$ours_import_s" "$plain_import_s" "$xd_s" "$ours_rss_kib" "$xd_rss_kib" <<'EOF'
import sys
root, meta, ours, xd = map(int, sys.argv[1:5])
ours_import, plain_import, xd_s = map(float, sys.argv[5:8])
ours_rss, xd_rss = map(int, sys.argv[8:10])
ours_s = max(ours_import - plain_import, 0.001)
print(f"root (second build)   {root / 2**20:9.1f} MiB")
print(f"                      {'ours':>12} {'xdelta3 -9':>12} {'ratio':>7}")
print(f"delta size            {ours / 2**20:9.2f} MiB {xd / 2**20:9.2f} MiB {ours / xd:7.2f}")
print(f"generation time       {ours_s:11.1f} s {xd_s:10.1f} s {ours_s / xd_s:7.2f}   (ours: import {ours_import:.1f} s - import --no-delta {plain_import:.1f} s)")
print(f"peak RSS              {ours_rss / 1024:9.0f} MiB {xd_rss / 1024:9.0f} MiB {ours_rss / xd_rss:7.2f}   (ours: the whole import)")
print(f"refresh download      {(meta + ours) / 2**20:9.2f} MiB of {(meta + root) / 2**20:.1f} MiB full: {100 * (meta + ours) / (meta + root):.1f}%")
EOF
