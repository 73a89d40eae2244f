#!/usr/bin/env bash
# Benchmark of the HTTPS side against nginx, both on 127.0.0.1, in one run:
#   1. a 1 GiB image file over HTTPS (curl, HTTP/1.1, TLS 1.3)
#   2. the same file over plain HTTP (curl; ours answers on its TLS port, as LXD's first try)
#   3. images.json of a 1,000-product catalog under wrk (100 connections, 10 s, HTTPS)
# and our peak RSS (VmHWM) during the wrk load. Prints each ratio ours/nginx (throughput;
# targets: >= 1.0) and the RSS (target: < 64 MiB).
#
# nginx is the Debian package, run with a private prefix and config: TLS 1.3 only, the same
# certificate and key as ours, sendfile on, access log on (ours logs every request too),
# worker_processes auto. Each figure is the median of RUNS tries (default 5), the servers'
# tries alternating, so that a burst of other work on the machine skews neither side; files
# are in the page cache.
#
# Usage: bench/http.sh          (builds the release binary first)
# Needs: curl, nginx, wrk (apt-get install curl nginx wrk). Honours CARGO_TARGET_DIR.
# Set KEEP=1 to keep the work folder (logs, configs) for a look afterwards.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-5}
file_mib=${FILE_MIB:-1024}
products=${PRODUCTS:-1000}
wrk_seconds=${WRK_SECONDS:-10}
wrk_connections=${WRK_CONNECTIONS:-100}

for tool in curl nginx wrk cargo; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        echo "bench: $tool is missing; apt-get install curl nginx wrk (and a Rust toolchain)" >&2
        exit 1
    fi
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

echo "building the release binary..." >&2
(cd "$repo" && cargo build --release --quiet)
bin="${CARGO_TARGET_DIR:-$repo/target}/release/simplestream-server"

work=$(mktemp -d /tmp/sss-bench.XXXXXX)
chmod 755 "$work"
data="$work/data"
ours_pid=""
nginx_pid_file="$work/nginx/nginx.pid"

cleanup() {
    if [ -n "$ours_pid" ] && kill -0 "$ours_pid" 2>/dev/null; then
        kill -TERM "$ours_pid" 2>/dev/null || true
        wait "$ours_pid" 2>/dev/null || true
    fi
    if [ -f "$nginx_pid_file" ]; then
        kill -QUIT "$(cat "$nginx_pid_file")" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "work folder kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# A free port on 127.0.0.1 for nginx (ours binds port 0 and says which port it got).
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

# --- The catalog: 1,000 products written as the catalog's record, then `rebuild` --------
echo "writing a catalog of $products products..." >&2
mkdir -p "$data/state"
{
    printf '{"format":1,"updated":1764244800,"products":{'
    for ((i = 0; i < products; i++)); do
        [ "$i" -gt 0 ] && printf ','
        dir="images/bench/$i/amd64/default/20251127_1200"
        printf '"bench:%d:amd64:default":{"os":"bench","release":"%d","arch":"amd64","variant":"default",' "$i" "$i"
        printf '"aliases":["bench/%d","bench/%d/default"],"requirements":{},"versions":{"20251127_1200":{' "$i" "$i"
        printf '"description":"bench %d amd64 (20251127_1200)","created":1764244800,"files":{"layout":"split",' "$i"
        printf '"metadata":{"path":"%s/metadata.tar.xz","size":%d,"sha256":"%064x"},' "$dir" $((300 + i)) $((i * 3))
        printf '"roots":{"container":{"kind":"squashfs","file":{"path":"%s/root.squashfs","size":%d,"sha256":"%064x"},' "$dir" $((100000000 + i)) $((i * 3 + 1))
        printf '"combined_sha256":"%064x","imported":{"by":"bench","at":1764244800,"sources":["bench"]}}}}}}}' $((i * 3 + 2))
    done
    printf '},"retired":[]}\n'
} >"$data/state/catalog.json"
"$bin" --data-dir "$data" rebuild
images_json="$data/www/streams/v1/images.json"
echo "images.json: $(stat -c %s "$images_json") bytes" >&2

# --- The 1 GiB file, in the page cache -----------------------------------------------------
big_rel="images/bench/big/disk.img"
big="$data/www/$big_rel"
mkdir -p "$(dirname "$big")"
echo "writing a ${file_mib} MiB file..." >&2
dd if=/dev/urandom of="$big" bs=1M count="$file_mib" status=none
cat "$big" >/dev/null

# --- Our server ------------------------------------------------------------------------------
# In its own session, as nginx (a daemon) is: with the kernel's autogroup scheduling, a
# session shares the CPU as one group, and a server left in this script's session would
# compete with curl and wrk for that group's share while nginx had a share of its own.
setsid "$bin" --data-dir "$data" serve --https-listen 127.0.0.1:0 --ssh-listen 127.0.0.1:0 \
    >"$work/ours.out" 2>"$work/ours.log" &
ours_pid=$!
for _ in $(seq 1 300); do
    grep -qx ready "$work/ours.out" && break
    kill -0 "$ours_pid" 2>/dev/null || { cat "$work/ours.log" >&2; exit 1; }
    sleep 0.1
done
ours_port=$(sed -n 's/^listening https 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$work/ours.out")
[ -n "$ours_port" ] || { echo "bench: our server did not start" >&2; cat "$work/ours.log" >&2; exit 1; }
cert="$data/tls/server.crt"
key="$data/tls/server.key"

# --- nginx -----------------------------------------------------------------------------------
nginx_tls_port=$(free_port)
nginx_plain_port=$(free_port)
mkdir -p "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<EOF
user root root;
worker_processes auto;
pid $nginx_pid_file;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    types { application/json json; }
    default_type application/octet-stream;
    access_log $work/nginx/access.log;
    client_body_temp_path $work/nginx/tmp/body;
    proxy_temp_path $work/nginx/tmp/proxy;
    fastcgi_temp_path $work/nginx/tmp/fastcgi;
    uwsgi_temp_path $work/nginx/tmp/uwsgi;
    scgi_temp_path $work/nginx/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$nginx_tls_port ssl;
        ssl_certificate $cert;
        ssl_certificate_key $key;
        ssl_protocols TLSv1.3;
        root $data/www;
    }
    server {
        listen 127.0.0.1:$nginx_plain_port;
        root $data/www;
    }
}
EOF
"$nginx_bin" -e "$work/nginx/error.log" -p "$work/nginx" -c "$work/nginx/nginx.conf"
for _ in $(seq 1 100); do
    curl -sk -o /dev/null "https://127.0.0.1:$nginx_tls_port/streams/v1/index.json" && break
    sleep 0.1
done

# --- Measurements ----------------------------------------------------------------------------
# Bytes per second of one curl download.
download_speed() {
    local url=$1 speed
    shift
    speed=$(curl -sS --http1.1 "$@" -o /dev/null -w '%{speed_download}' "$url")
    echo "${speed%.*}"
}

# Bytes per second as whole MiB/s, space-separated.
to_mib() {
    printf '%s\n' "$@" | awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 / 1048576 }'
}

# The middle value of its arguments (numbers).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# CPU time (clock ticks, user + system) used so far by our server, or by nginx's workers.
# Throughput on a shared machine depends on what else runs; CPU per unit of work does not.
cpu_ticks() {
    local pids=() total=0 pid
    if [ "$1" = ours ]; then
        pids=("$ours_pid")
    else
        mapfile -t pids < <(pgrep -P "$(cat "$nginx_pid_file")")
    fi
    for pid in "${pids[@]}"; do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
    done
    echo "$total"
}

# The median of $runs downloads from each server, their tries interleaved (ours, nginx,
# ...), then each server's CPU ticks over all its tries.
download_pair() {
    local ours_url=$1 nginx_url=$2 ours=() nginx=() ours_cpu=0 nginx_cpu=0 before
    shift 2
    for ((run = 0; run < runs; run++)); do
        before=$(cpu_ticks ours)
        ours+=("$(download_speed "$ours_url" "$@")")
        ours_cpu=$((ours_cpu + $(cpu_ticks ours) - before))
        before=$(cpu_ticks nginx)
        nginx+=("$(download_speed "$nginx_url" "$@")")
        nginx_cpu=$((nginx_cpu + $(cpu_ticks nginx) - before))
    done
    echo "  MiB/s, ours: $(to_mib "${ours[@]}"); nginx: $(to_mib "${nginx[@]}")" >&2
    echo "$(median "${ours[@]}") $(median "${nginx[@]}") $ours_cpu $nginx_cpu"
}

# Seconds of CPU per GiB sent, from ticks over all $runs downloads.
cpu_per_gib() {
    awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v n="$runs" -v mib="$file_mib" \
        'BEGIN { printf "%.2f s", t / hz / (n * mib / 1024) }'
}

requests_per_second() {
    wrk -t2 -c"$wrk_connections" -d"${wrk_seconds}s" "$1" | awk '/^Requests\/sec:/ {print $2}'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
mib_s() { awk -v b="$1" 'BEGIN { printf "%.0f MiB/s", b / 1048576 }'; }
verdict() { awk -v r="$1" 'BEGIN { print ((r >= 1.0) ? "target met" : "TARGET MISSED") }'; }

echo "images.json under wrk (${wrk_connections} connections, ${wrk_seconds} s, median of $runs)..." >&2
echo 5 >"/proc/$ours_pid/clear_refs"  # resets VmHWM: the peak below is the wrk load's
ours_rounds=()
nginx_rounds=()
ours_wrk_cpu=0
nginx_wrk_cpu=0
for ((run = 0; run < runs; run++)); do
    before=$(cpu_ticks ours)
    ours_rounds+=("$(requests_per_second "https://127.0.0.1:$ours_port/streams/v1/images.json")")
    ours_wrk_cpu=$((ours_wrk_cpu + $(cpu_ticks ours) - before))
    before=$(cpu_ticks nginx)
    nginx_rounds+=("$(requests_per_second "https://127.0.0.1:$nginx_tls_port/streams/v1/images.json")")
    nginx_wrk_cpu=$((nginx_wrk_cpu + $(cpu_ticks nginx) - before))
done
echo "  requests/s, ours: ${ours_rounds[*]}; nginx: ${nginx_rounds[*]}" >&2
ours_rps=$(median "${ours_rounds[@]}")
nginx_rps=$(median "${nginx_rounds[@]}")
ours_hwm_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$ours_pid/status")

echo "the ${file_mib} MiB file over HTTPS (median of $runs)..." >&2
read -r ours_tls nginx_tls ours_tls_cpu nginx_tls_cpu < <(download_pair \
    "https://127.0.0.1:$ours_port/$big_rel" "https://127.0.0.1:$nginx_tls_port/$big_rel" \
    --tlsv1.3 --cacert "$cert")

echo "the ${file_mib} MiB file over plain HTTP (median of $runs)..." >&2
read -r ours_plain nginx_plain ours_plain_cpu nginx_plain_cpu < <(download_pair \
    "http://127.0.0.1:$ours_port/$big_rel" "http://127.0.0.1:$nginx_plain_port/$big_rel")

size_label=$([ "$file_mib" = 1024 ] && echo "1 GiB" || echo "$file_mib MiB")
tls_ratio=$(ratio "$ours_tls" "$nginx_tls")
plain_ratio=$(ratio "$ours_plain" "$nginx_plain")
rps_ratio=$(ratio "$ours_rps" "$nginx_rps")
hwm_mib=$(awk -v k="$ours_hwm_kib" 'BEGIN { printf "%.1f", k / 1024 }')
hwm_verdict=$(awk -v k="$ours_hwm_kib" 'BEGIN { print ((k < 65536) ? "target met" : "TARGET MISSED") }')

echo
echo "simplestream-server vs nginx $("$nginx_bin" -v 2>&1 | sed 's/.*nginx\///'), 127.0.0.1, $(nproc) cores"
printf '%-34s %14s %14s %7s  %s\n' "" "ours" "nginx" "ratio" ""
printf '%-34s %14s %14s %7s  %s\n' "$size_label over HTTPS (TLS 1.3)" "$(mib_s "$ours_tls")" \
    "$(mib_s "$nginx_tls")" "$tls_ratio" "$(verdict "$tls_ratio")"
printf '%-34s %14s %14s %7s  %s\n' "$size_label over plain HTTP" "$(mib_s "$ours_plain")" \
    "$(mib_s "$nginx_plain")" "$plain_ratio" "$(verdict "$plain_ratio")"
printf '%-34s %14s %14s %7s  %s\n' "images.json ($products products), req/s" "$ours_rps" \
    "$nginx_rps" "$rps_ratio" "$(verdict "$rps_ratio")"
printf '%-34s %14s %14s %7s  %s\n' "our peak RSS under wrk (VmHWM)" "$hwm_mib MiB" "" "" "$hwm_verdict"

# CPU per request: ticks over all rounds / requests in all rounds.
per_request() {
    local ticks=$1
    shift
    printf '%s\n' "$@" | awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v s="$wrk_seconds" \
        '{ n += $1 * s } END { printf "%.0f us", (n > 0 ? t / hz / n * 1e6 : 0) }'
}
echo
echo "server CPU time, all tries (lower is better; steadier than throughput on a busy machine)"
printf '%-34s %14s %14s\n' "per GiB over HTTPS" "$(cpu_per_gib "$ours_tls_cpu")" \
    "$(cpu_per_gib "$nginx_tls_cpu")"
printf '%-34s %14s %14s\n' "per GiB over plain HTTP" "$(cpu_per_gib "$ours_plain_cpu")" \
    "$(cpu_per_gib "$nginx_plain_cpu")"
printf '%-34s %14s %14s\n' "per images.json request" "$(per_request "$ours_wrk_cpu" "${ours_rounds[@]}")" \
    "$(per_request "$nginx_wrk_cpu" "${nginx_rounds[@]}")"
