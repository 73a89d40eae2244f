#!/usr/bin/env bash
# Benchmark of the S3 backend on a real 3-node Garage cluster (replication factor 3) on
# 127.0.0.1, in one run:
#   download   a FILE_MIB image file (default 1 GiB) through a read replica (`serve
#              --read-only`, HTTPS, TLS 1.3) vs straight from Garage's S3 endpoint (plain
#              HTTP, SigV4-signed GET) of the node the replica reads from. Goal: ratio >= 0.9.
#              Also through the replica over plain HTTP, which LXD and Incus try first.
#   publish    `import` of a split image with a FILE_MIB root into the bucket vs into a local
#              data directory (a fresh prefix / directory per try).
#   rss        the replica's peak RSS (VmHWM) after all its downloads. Goal: < 64 MiB.
#   cpu        the CPU seconds each download took in the replica, Garage's node 0 and curl:
#              when the machine's cores are all busy (2 cores running Garage, the replica and
#              curl), the speeds' ratio is about the inverse of these totals' ratio.
# Each pair of figures is taken RUNS times (default 3), the two sides alternating so that a
# burst of other work on the machine skews neither; ratios are printed per try and as a range.
# Files are in the page cache (the source squashfs) or in Garage's data directories, which sit
# on the same disk as everything else here: this measures the software path, not a network.
#
# Usage: bench/s3.sh            (builds the release binary first)
# Environment: RUNS (3), FILE_MIB (1024), KEEP=1 keeps the work folder (logs, configs),
# BIN=path/to/simplestream-server skips the build.
# Needs: garage 2.5.0 (tests/run builds it), curl, openssl, mksquashfs, xz, jq.
# Honours CARGO_TARGET_DIR.
set -euo pipefail
shopt -s inherit_errexit

repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-3}
file_mib=${FILE_MIB:-1024}

garage=$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")
if [ ! -x "$garage" ]; then
    echo "bench: garage is missing; run tests/run (it builds garage 2.5.0 once)" >&2
    exit 1
fi
for tool in curl openssl mksquashfs xz jq cargo; do
    command -v "$tool" >/dev/null || {
        echo "bench: $tool is missing; apt-get install curl openssl squashfs-tools xz-utils jq (and a Rust toolchain)" >&2
        exit 1
    }
done

bin=${BIN:-}
if [ -z "$bin" ]; then
    echo "building the release binary..." >&2
    (cd "$repo" && cargo build --release --quiet)
    bin="${CARGO_TARGET_DIR:-$repo/target}/release/simplestream-server"
fi

work=$(mktemp -d /tmp/sss-bench-s3.XXXXXX)
garage_pids=()
replica_pid=""
cleanup() {
    if [ -n "$replica_pid" ]; then
        kill -TERM "$replica_pid" 2>/dev/null || true
        wait "$replica_pid" 2>/dev/null || true
    fi
    for pid in "${garage_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "work folder kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# A free port on 127.0.0.1.
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# Polls "$@" until it succeeds, for at most 60 s.
wait_for() {
    local what=$1
    shift
    for _ in $(seq 1 600); do
        "$@" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "bench: timed out waiting for $what" >&2
    exit 1
}

# Wall time of a command in seconds (3 decimals).
seconds() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
range() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }
mib_s() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }

# --- A 3-node Garage cluster ---------------------------------------------------------------
echo "starting a 3-node Garage cluster..." >&2
region=garage
bucket=images
access_key="GK$(openssl rand -hex 12)"
secret_key=$(openssl rand -hex 32)
rpc_secret=$(openssl rand -hex 32)
s3_ports=()
for i in 0 1 2; do
    node="$work/garage/node$i"
    mkdir -p "$node"
    rpc=$(free_port)
    s3=$(free_port)
    s3_ports+=("$s3")
    cat >"$node/garage.toml" <<EOF
metadata_dir = "$node/meta"
data_dir = "$node/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$rpc_secret"

[s3_api]
s3_region = "$region"
api_bind_addr = "127.0.0.1:$s3"

[s3_web]
bind_addr = "127.0.0.1:$(free_port)"
root_domain = ".web.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$(free_port)"
EOF
    setsid "$garage" -c "$node/garage.toml" server >"$node/log" 2>&1 &
    garage_pids+=("$!")
done
g() { "$garage" -c "$work/garage/node$1/garage.toml" "${@:2}"; }
ids=()
for i in 0 1 2; do
    wait_for "garage node $i" g "$i" node id -q
    ids+=("$(g "$i" node id -q)")
done
g 0 node connect "${ids[1]}" >/dev/null
g 0 node connect "${ids[2]}" >/dev/null
for id in "${ids[@]}"; do
    g 0 layout assign -z dc1 -c 100G "${id%%@*}" >/dev/null
done
g 0 layout apply --version 1 >/dev/null
g 0 bucket create "$bucket" >/dev/null
g 0 key import --yes -n bench "$access_key" "$secret_key" >/dev/null
g 0 bucket allow --read --write --owner "$bucket" --key "$access_key" >/dev/null
healthy() {
    local i
    for i in 0 1 2; do
        g "$i" json-api GetClusterHealth | jq -e '.status == "healthy"' >/dev/null || return 1
    done
}
wait_for "the cluster to be healthy" healthy

endpoint="http://127.0.0.1:${s3_ports[0]}"
# A SigV4-signed request to node 0's S3 API: s3 METHOD KEY [curl options...].
s3() {
    curl -sS --fail --aws-sigv4 "aws:amz:$region:s3" --user "$access_key:$secret_key" \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -X "$1" "${@:3}" "$endpoint/$bucket/$2"
}
echo probe >"$work/probe"
wait_for "a write to Garage" s3 PUT probe -T "$work/probe"
wait_for "a read from Garage" s3 GET probe -o /dev/null

# --- The image --------------------------------------------------------------------------------
echo "building a ${file_mib} MiB split image..." >&2
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
head -c "$((file_mib * 1024 * 1024))" /dev/urandom >"$work/tree/blob"
mksquashfs "$work/tree" "$work/root.squashfs" -noappend -quiet -no-progress -noI -noD -noF -noX >/dev/null
rm -rf "$work/tree"
cat "$work/root.squashfs" >/dev/null # warm the page cache

# The [storage] table for keys under prefix $1.
storage_config() {
    cat <<EOF
[storage]
backend = "s3"
endpoint = "$endpoint"
region = "$region"
bucket = "$bucket"
prefix = "$1"
path_style = true
conditional_writes = false
EOF
}
export AWS_ACCESS_KEY_ID=$access_key AWS_SECRET_ACCESS_KEY=$secret_key

# --- Publication: into the bucket vs into a local data directory ----------------------------
publish_s3=() publish_local=() publish_ratios=()
for ((run = 1; run <= runs; run++)); do
    echo "publication $run/$runs ($(uptime | sed 's/.*load average/load average/'))..." >&2
    mkdir -p "$work/writer$run" "$work/local$run"
    storage_config "run$run/" >"$work/writer$run/config.toml"
    s=$(seconds "$bin" --data-dir "$work/writer$run" import "$work/lxd.tar.xz" "$work/root.squashfs")
    l=$(seconds "$bin" --data-dir "$work/local$run" import "$work/lxd.tar.xz" "$work/root.squashfs")
    rm -rf "$work/local$run"
    publish_s3+=("$s")
    publish_local+=("$l")
    publish_ratios+=("$(ratio "$s" "$l")")
done

# --- Downloads: through a replica vs straight from Garage -----------------------------------
mkdir -p "$work/replica"
storage_config "run1/" >"$work/replica/config.toml"
setsid "$bin" --data-dir "$work/replica" serve --read-only --https-listen 127.0.0.1:0 \
    >"$work/replica.out" 2>"$work/replica.log" &
replica_pid=$!
wait_for "the replica to be ready" grep -qx ready "$work/replica.out"
replica_port=$(sed -n 's/^listening https 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$work/replica.out")
cert="$work/replica/tls/server.crt"
replica="https://127.0.0.1:$replica_port"
root_path=$(curl -sS --cacert "$cert" "$replica/streams/v1/images.json" |
    jq -r '[.products[].versions[].items[] | select(.ftype == "squashfs") | .path][0]')
echo 5 >"/proc/$replica_pid/clear_refs" # VmHWM from here: the downloads' peak

through_replica() {
    curl -sS --fail --http1.1 --tlsv1.3 --cacert "$cert" -o /dev/null -w '%{speed_download}' \
        "$replica/$root_path"
}
# What LXD and Incus do first: plain HTTP on the same port (the replica serves image files so).
through_replica_plain() {
    curl -sS --fail --http1.1 -o /dev/null -w '%{speed_download}' \
        "http://127.0.0.1:$replica_port/$root_path"
}
from_garage() { s3 GET "run1/$root_path" -o /dev/null -w '%{speed_download}'; }

# CPU seconds (user + system) a process has used so far, and those of commands run by "$@"
# (curl), so that each download's cost is known per side: on a machine whose cores are all
# busy, the ratio of speeds is the ratio of the CPU each path needs.
clk_tck=$(getconf CLK_TCK)
cpu_of() { awk -v t="$clk_tck" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }
children_cpu() { awk -v t="$clk_tck" '{ printf "%.3f", ($16 + $17) / t }' /proc/$$/stat; }
# Runs a download function; sets speed, and the CPU seconds of the replica, of Garage's
# node 0 and of curl it took.
measured() {
    local r0 g0 c0
    r0=$(cpu_of "$replica_pid") g0=$(cpu_of "${garage_pids[0]}") c0=$(children_cpu)
    "$1" >"$work/speed"
    speed=$(cat "$work/speed")
    cpu_replica=$(awk -v a="$r0" -v b="$(cpu_of "$replica_pid")" 'BEGIN { printf "%.2f", b - a }')
    cpu_garage=$(awk -v a="$g0" -v b="$(cpu_of "${garage_pids[0]}")" 'BEGIN { printf "%.2f", b - a }')
    cpu_curl=$(awk -v a="$c0" -v b="$(children_cpu)" 'BEGIN { printf "%.2f", b - a }')
}

download_replica=() download_plain=() download_garage=() download_ratios=() plain_ratios=()
cpu_tls=() cpu_plain=() cpu_direct=()
for ((run = 1; run <= runs; run++)); do
    echo "download $run/$runs ($(uptime | sed 's/.*load average/load average/'))..." >&2
    measured through_replica
    r=$speed
    cpu_tls+=("$cpu_replica+$cpu_garage+$cpu_curl")
    measured from_garage
    d=$speed
    cpu_direct+=("$cpu_garage+$cpu_curl")
    measured through_replica_plain
    p=$speed
    cpu_plain+=("$cpu_replica+$cpu_garage+$cpu_curl")
    download_replica+=("$(mib_s "$r")")
    download_garage+=("$(mib_s "$d")")
    download_plain+=("$(mib_s "$p")")
    download_ratios+=("$(ratio "$r" "$d")")
    plain_ratios+=("$(ratio "$p" "$d")")
done
hwm=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$replica_pid/status")

# --- Results ------------------------------------------------------------------------------------
verdict() { awk -v v="$1" -v goal="$2" -v dir="$3" 'BEGIN {
    met = (dir == "max") ? (v <= goal) : (v >= goal); print (met ? "goal met" : "GOAL MISSED") }'; }
# How many of the ratios given reach 0.9.
met() { printf '%s\n' "$@" | awk '$1 >= 0.9 { n++ } END { print n + 0 }'; }
echo
echo "simplestream-server S3 backend on Garage $("$garage" --version | awk '{ print $2 }'), 3 nodes, 127.0.0.1, $(nproc) cores, $runs alternating tries"
echo "load average at the end: $(uptime | sed 's/.*load average: //')"
printf '%-48s %s\n' \
    "download ${file_mib} MiB, replica (HTTPS), MiB/s" "${download_replica[*]}" \
    "download ${file_mib} MiB, Garage S3 (HTTP), MiB/s" "${download_garage[*]}" \
    "  replica / Garage" "${download_ratios[*]} (range $(range "${download_ratios[@]}"); goal >= 0.9 met in $(met "${download_ratios[@]}") of $runs tries)" \
    "download ${file_mib} MiB, replica (plain HTTP), MiB/s" "${download_plain[*]}" \
    "  replica plain / Garage" "${plain_ratios[*]} (range $(range "${plain_ratios[@]}"); goal >= 0.9 met in $(met "${plain_ratios[@]}") of $runs tries)" \
    "CPU s per download, replica+Garage+curl: HTTPS" "${cpu_tls[*]}" \
    "  plain HTTP" "${cpu_plain[*]}" \
    "  straight from Garage (Garage+curl)" "${cpu_direct[*]}" \
    "publish ${file_mib} MiB into the bucket, s" "${publish_s3[*]}" \
    "publish ${file_mib} MiB into a local dir, s" "${publish_local[*]}" \
    "  bucket / local" "${publish_ratios[*]} (range $(range "${publish_ratios[@]}"))" \
    "replica peak RSS (VmHWM) over the downloads" "$hwm MiB ($(verdict "$hwm" 64 max): < 64 MiB)"
