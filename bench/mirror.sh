#!/usr/bin/env bash
# Pull-mirror speed and memory against sstream-mirror (python-simplestreams), same tree,
# same machine, side by side.
#
#   bench/mirror.sh [PRODUCTS] [ROOT_MIB] [ROUNDS]     (defaults: 8, 256 and $ROUNDS or 2: about 2 GiB)
#
# 1. Generates an upstream tree shaped like images.linuxcontainers.org (index.json, images.json,
#    incus.tar.xz metadata, a squashfs root of random, incompressible data per product) and
#    serves it over HTTPS on 127.0.0.1 with nginx (a throwaway CA, its leaf for 127.0.0.1).
# 2. Installs python-simplestreams from PyPI into a venv in the work directory (it is not in
#    Debian 12's apt).
# 3. Each round mirrors the whole tree into an empty target with both tools, alternating which
#    goes first: `simplestream-server mirror sync` (a catalog: verified, published, twins) and
#    `sstream-mirror` (a directory copy, checksummed). Wall time and peak RSS (GNU time).
#    Goals: our wall time <= 0.5x sstream-mirror's; our peak RSS < 64 MiB.
# 4. Runs our mirror again with nothing new (median of 3). Goal: < 1 s.
# Disk: one target at a time (each is deleted after its runs); the tree sits in /dev/shm.
# BIN=path/to/simplestream-server skips the release build.
# The machine may be shared: the script prints every round so that ranges can be reported.
set -euo pipefail

products=${1:-8}
root_mib=${2:-256}
rounds=${3:-${ROUNDS:-2}}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/sss-bench-mirror.XXXXXX)
# The upstream tree lives in memory (/dev/shm) when it can: it is served from the page cache
# either way, and the disk then holds only the target being written.
tree_base=/dev/shm
[ -d "$tree_base" ] && [ -w "$tree_base" ] || tree_base=/tmp
tree_dir=$(mktemp -d "$tree_base/sss-bench-mirror-tree.XXXXXX")
nginx_pid=
cleanup() {
    if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
    rm -rf "$work" "$tree_dir"
}
trap cleanup EXIT

for tool in nginx openssl mksquashfs xz python3 /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install nginx openssl squashfs-tools xz-utils python3 python3-venv time)" >&2; exit 1; }
done

bin=${BIN:-}
if [[ -z $bin ]]; then
    echo "building the release binary..." >&2
    (cd "$here" && cargo build --release --quiet)
    bin="${CARGO_TARGET_DIR:-$here/target}/release/simplestream-server"
fi

echo "installing python-simplestreams into a venv..." >&2
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check python-simplestreams==0.1.0.post59
sstream_mirror="$work/venv/bin/sstream-mirror"

echo "generating the upstream tree: $products products of ${root_mib} MiB..." >&2
upstream="$tree_dir/upstream"
mkdir -p "$upstream/streams/v1"
for n in $(seq 1 "$products"); do
    dir="$upstream/images/benchos/$n/amd64/default/20261201_00:00"
    mkdir -p "$dir" "$work/meta" "$work/rootfs"
    cat >"$work/meta/metadata.yaml" <<EOF
architecture: x86_64
creation_date: 1764547200
properties:
  os: benchos
  release: "$n"
  variant: default
  description: benchmark image $n
EOF
    tar -C "$work/meta" -cJf "$dir/incus.tar.xz" metadata.yaml
    head -c "$((root_mib * 1024 * 1024))" /dev/urandom >"$work/rootfs/blob"
    mksquashfs "$work/rootfs" "$dir/rootfs.squashfs" -noappend -quiet -no-progress -noI -noD -noF -noX >/dev/null
    rm -rf "$work/meta" "$work/rootfs"
done
python3 - "$upstream" <<'EOF'
import hashlib, json, os, sys
root = sys.argv[1]
def sha256(*paths):
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
products = {}
images = os.path.join(root, "images/benchos")
for release in sorted(os.listdir(images), key=int):
    base = f"images/benchos/{release}/amd64/default/20261201_00:00"
    meta, squash = f"{root}/{base}/incus.tar.xz", f"{root}/{base}/rootfs.squashfs"
    products[f"benchos:{release}:amd64:default"] = {
        "arch": "amd64", "os": "benchos", "release": release, "release_title": release,
        "variant": "default", "aliases": f"benchos/{release},benchos/{release}/default",
        "versions": {"20261201_00:00": {"items": {
            "incus.tar.xz": {"ftype": "incus.tar.xz", "path": f"{base}/incus.tar.xz",
                             "size": os.path.getsize(meta), "sha256": sha256(meta),
                             "combined_squashfs_sha256": sha256(meta, squash)},
            "root.squashfs": {"ftype": "squashfs", "path": f"{base}/rootfs.squashfs",
                              "size": os.path.getsize(squash), "sha256": sha256(squash)}}}}}
updated = "Tue, 01 Dec 2026 00:00:00 +0000"
json.dump({"content_id": "images", "datatype": "image-downloads", "format": "products:1.0",
           "updated": updated, "products": products},
          open(f"{root}/streams/v1/images.json", "w"))
json.dump({"format": "index:1.0", "updated": updated, "index": {"images": {
    "datatype": "image-downloads", "path": "streams/v1/images.json", "format": "products:1.0",
    "updated": updated, "products": sorted(products)}}},
          open(f"{root}/streams/v1/index.json", "w"))
EOF
tree_bytes=$(du -sb "$upstream" | cut -f1)

echo "serving it over HTTPS with nginx..." >&2
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$work/leaf.key" -out "$work/leaf.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$work/leaf.ext"
openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 2 -extfile "$work/leaf.ext" -out "$work/leaf.pem" 2>/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
daemon off;
user root root;
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    types { application/json json; }
    default_type application/octet-stream;
    sendfile on;
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $work/leaf.pem;
        ssl_certificate_key $work/leaf.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $upstream;
    }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
nginx_pid=$!
url="https://127.0.0.1:$port"
for _ in $(seq 1 100); do
    curl -sf --cacert "$work/ca.pem" "$url/streams/v1/index.json" >/dev/null && break
    sleep 0.1
done
curl -sf --cacert "$work/ca.pem" "$url/streams/v1/index.json" >/dev/null || { echo "bench: nginx did not come up" >&2; exit 1; }
cat "$upstream"/images/benchos/*/amd64/default/*/* >/dev/null # both read from a warm cache

# Runs a command; sets `secs` (wall time) and `rss` (peak RSS, KiB).
measure() {
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$work/rss" "$@" >"$work/out" 2>"$work/err" || {
        echo "bench: $* failed:" >&2; cat "$work/err" "$work/out" >&2; exit 1; }
    end=$(date +%s.%N)
    secs=$(echo "$start $end" | awk '{printf "%.3f", $2 - $1}')
    rss=$(tail -n 1 "$work/rss")
}

median() {
    sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

ours() { measure "$bin" --data-dir "$work/data" mirror sync "$url" --ca-cert "$work/ca.pem"; }
theirs() { SSL_CERT_FILE="$work/ca.pem" measure "$sstream_mirror" --no-verify --path streams/v1/index.json "$url/" "$work/sstream"; }
ours_round() { ours; our_times+=("$secs"); our_rss+=("$rss"); ours_summary=$(tail -n 1 "$work/out"); }
theirs_round() { theirs; their_times+=("$secs"); their_rss+=("$rss"); }

# One target on disk at a time (2 GiB each): each tool's full run, in the last round its
# reruns with nothing new, then its target goes.
our_times=() their_times=() our_rss=() their_rss=() rerun_times=()
ours_full() {
    rm -rf "$work/data"; sync
    ours_round
    if [ "$round" -eq "$rounds" ]; then
        listed=$("$bin" --data-dir "$work/data" list --format csv | tail -n +2 | wc -l)
        [ "$listed" -eq "$products" ] || { echo "bench: our catalog lists $listed images, not $products" >&2; exit 1; }
        for _ in 1 2 3; do
            ours; rerun_times+=("$secs")
        done
        echo "our rerun's summary line: $(tail -n 1 "$work/out")" >&2
    fi
    rm -rf "$work/data"
}
theirs_full() {
    rm -rf "$work/sstream"; sync
    theirs_round
    if [ "$round" -eq "$rounds" ]; then
        theirs; their_rerun=$secs
    fi
    rm -rf "$work/sstream"
}
for round in $(seq 1 "$rounds"); do
    if [ $((round % 2)) -eq 1 ]; then
        ours_full; theirs_full
    else
        theirs_full; ours_full
    fi
    echo "round $round: ours ${our_times[-1]} s (peak RSS ${our_rss[-1]} KiB), sstream-mirror ${their_times[-1]} s (peak RSS ${their_rss[-1]} KiB)" >&2
done
echo "our summary line: $ours_summary" >&2

our_s=$(printf '%s\n' "${our_times[@]}" | median)
their_s=$(printf '%s\n' "${their_times[@]}" | median)
rss_max=$(printf '%s\n' "${our_rss[@]}" | sort -n | tail -n 1)
their_rss_max=$(printf '%s\n' "${their_rss[@]}" | sort -n | tail -n 1)
rerun_s=$(printf '%s\n' "${rerun_times[@]}" | median)

echo
echo "mirror of $products products, $((tree_bytes >> 20)) MiB, from nginx over HTTPS on 127.0.0.1 (median of $rounds rounds)"
printf '  sstream-mirror               %7.3f s   peak RSS %6d KiB\n' "$their_s" "$their_rss_max"
printf '  simplestream-server mirror   %7.3f s   peak RSS %6d KiB   ratio %.2f (goal <= 0.5; RSS goal < 65536 KiB)\n' \
    "$our_s" "$rss_max" "$(echo "$our_s $their_s" | awk '{print $1/$2}')"
printf '  rerun, nothing new: ours %.3f s (median of 3; goal < 1 s), sstream-mirror %.3f s\n' "$rerun_s" "$their_rerun"
echo "  rounds: ours ${our_times[*]} s; sstream-mirror ${their_times[*]} s; our reruns ${rerun_times[*]} s"
