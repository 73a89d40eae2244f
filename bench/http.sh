#!/usr/bin/env bash
# Benchmark of the HTTPS side against nginx, both on 127.0.0.1, in one run. Sections (all by
# default; pick some with SECTIONS="plain small"):
#   tls         a 1 GiB image file over HTTPS (curl, HTTP/1.1, TLS 1.3), one client
#   plain       the same file over plain HTTP (curl; ours answers on its TLS port, as LXD's
#               first try)
#   small       images.json and index.json of a 20-image catalog under wrk (50 connections,
#               keep-alive, HTTPS)
#   handshakes  2,000 new TLS connections, 50 at a time, each fetching index.json with
#               `Connection: close` and no session resumption (what polling daemons do)
#   fleet       200 concurrent HTTPS downloads of a 256 MiB image: aggregate throughput, the
#               slowest client's time over the median client's, our peak RSS
#   catalog     images.json of a 1,000-product catalog under wrk (100 connections, HTTPS),
#               and our peak RSS during it
# Prints each figure for both servers and the ratio ours/nginx, then the servers' CPU time per
# unit of work (from /proc: ours is its process, nginx's its workers), which is steadier than
# throughput on a busy machine.
#
# nginx is the Debian package, run with a private prefix and config: TLS 1.3 only, the same
# certificate and key as ours, sendfile on, tcp_nopush on, access log on (ours logs every
# request too), worker_processes auto, its default session tickets. Each figure is the median
# of RUNS tries (default 5; FLEET_RUNS, default 3, for the fleet), the servers' tries
# alternating, so that a burst of other work on the machine skews neither side; files are in
# the page cache. `handshakes` and `fleet` use bench/https_load.rs (one rustls client
# process, built here), so the client side costs the same against both servers.
#
# Usage: bench/http.sh          (builds the release binary and the client first)
# Environment: RUNS, FLEET_RUNS, SECTIONS, FILE_MIB (1024), FLEET_MIB (256), FLEET_CLIENTS
# (200), PRODUCTS (1000), WRK_SECONDS (10), CONNECTIONS (2000), KEEP=1 keeps the work folder
# (logs, configs) for a look afterwards. BIN=path/to/simplestream-server skips the release
# build of the server (e.g. to measure an older binary; the load client is still built
# when a section needs it).
# Needs: curl, nginx, wrk (apt-get install curl nginx wrk). Honours CARGO_TARGET_DIR.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-5}
fleet_runs=${FLEET_RUNS:-3}
sections=${SECTIONS:-"tls plain small handshakes fleet catalog"}
file_mib=${FILE_MIB:-1024}
fleet_mib=${FLEET_MIB:-256}
fleet_clients=${FLEET_CLIENTS:-200}
products=${PRODUCTS:-1000}
wrk_seconds=${WRK_SECONDS:-10}
connections=${CONNECTIONS:-2000}
hz=$(getconf CLK_TCK)

for tool in curl nginx wrk cargo; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        echo "bench: $tool is missing; apt-get install curl nginx wrk (and a Rust toolchain)" >&2
        exit 1
    fi
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
wants() { [[ " $sections " == *" $1 "* ]]; }

target_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
bin=${BIN:-}
if [[ -z $bin ]]; then
    echo "building the release binary and the load client..." >&2
    (cd "$repo" && cargo build --release --quiet)
    bin="$target_dir/simplestream-server"
fi
load="$target_dir/examples/https_load"
if wants handshakes || wants fleet; then
    (cd "$repo" && cargo build --release --quiet --example https_load)
fi

work=$(mktemp -d /tmp/sss-bench.XXXXXX)
chmod 755 "$work"
ours_pid=""
nginx_pid_file="$work/nginx/nginx.pid"

stop_ours() {
    if [ -n "$ours_pid" ] && kill -0 "$ours_pid" 2>/dev/null; then
        kill -TERM "$ours_pid" 2>/dev/null || true
        wait "$ours_pid" 2>/dev/null || true
    fi
    ours_pid=""
}

cleanup() {
    stop_ours
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

# A catalog of $2 products written as the catalog's record in data dir $1, then `rebuild`.
write_catalog() {
    local data=$1 count=$2 i dir
    mkdir -p "$data/state"
    {
        printf '{"format":1,"updated":1764244800,"products":{'
        for ((i = 0; i < count; i++)); do
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
    echo "  $count products: images.json $(stat -c %s "$data/www/streams/v1/images.json") bytes" >&2
}

# A file of $2 MiB of random bytes at www/$1 of the small catalog, in the page cache.
write_image() {
    mkdir -p "$(dirname "$small/www/$1")"
    dd if=/dev/urandom of="$small/www/$1" bs=1M count="$2" status=none
    cat "$small/www/$1" >/dev/null
}

# Our server on data dir $1. In its own session, as nginx (a daemon) is: with the kernel's
# autogroup scheduling, a session shares the CPU as one group, and a server left in this
# script's session would compete with curl and wrk for that group's share while nginx had a
# share of its own.
start_ours() {
    stop_ours
    : >"$work/ours.out"
    setsid "$bin" --data-dir "$1" serve --https-listen 127.0.0.1:0 --ssh-listen 127.0.0.1:0 \
        >"$work/ours.out" 2>>"$work/ours.log" &
    ours_pid=$!
    for _ in $(seq 1 300); do
        grep -qx ready "$work/ours.out" && break
        kill -0 "$ours_pid" 2>/dev/null || { cat "$work/ours.log" >&2; exit 1; }
        sleep 0.1
    done
    ours_port=$(sed -n 's/^listening https 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$work/ours.out")
    [ -n "$ours_port" ] || { echo "bench: our server did not start" >&2; cat "$work/ours.log" >&2; exit 1; }
}

echo "writing the catalogs and files..." >&2
small="$work/small"
large="$work/large"
write_catalog "$small" 20
big_rel="images/bench/big/disk.img"
fleet_rel="images/bench/fleet/disk.img"
if wants tls || wants plain; then write_image "$big_rel" "$file_mib"; fi
if wants fleet; then write_image "$fleet_rel" "$fleet_mib"; fi
if wants catalog; then write_catalog "$large" "$products"; fi

start_ours "$small"
# Both catalogs were made with the same data dir layout; ours generated the certificate in the
# small one, and the large one gets the same pair, as nginx serves both with it.
cert="$small/tls/server.crt"
key="$small/tls/server.key"
if wants catalog; then mkdir -p "$large/tls" && cp -p "$cert" "$key" "$large/tls/"; fi

# --- nginx -----------------------------------------------------------------------------------
nginx_tls_port=$(free_port)
nginx_large_port=$(free_port)
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
    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.3;
    server {
        listen 127.0.0.1:$nginx_tls_port ssl;
        root $small/www;
    }
    server {
        listen 127.0.0.1:$nginx_large_port ssl;
        root $large/www;
    }
    server {
        listen 127.0.0.1:$nginx_plain_port;
        root $small/www;
    }
}
EOF
"$nginx_bin" -e "$work/nginx/error.log" -p "$work/nginx" -c "$work/nginx/nginx.conf"
for _ in $(seq 1 100); do
    curl -sk -o /dev/null "https://127.0.0.1:$nginx_tls_port/streams/v1/index.json" && break
    sleep 0.1
done

# --- Measurements ----------------------------------------------------------------------------
# The middle value of its arguments (numbers).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# CPU time (clock ticks, user + system) used so far by our server, or by nginx's workers.
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

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
mib_s() { awk -v b="$1" 'BEGIN { printf "%.0f MiB/s", b / 1048576 }'; }
# "target met" when ours/nginx $1 is at least (higher is better) or at most $2.
verdict() {
    awk -v r="$1" -v goal="$2" -v dir="$3" 'BEGIN {
        met = (dir == "max") ? (r <= goal) : (r >= goal)
        print (met ? "target met" : "TARGET MISSED") }'
}

results="$work/results"
cpu_results="$work/cpu"
: >"$results"
: >"$cpu_results"
row() { printf '%-40s %14s %14s %7s  %s\n' "$@" >>"$results"; }
cpu_row() { printf '%-40s %14s %14s %7s\n' "$@" >>"$cpu_results"; }
# Seconds of CPU per unit: ticks $1 over $2 units, scaled by $3 (1 for s, 1e6 for us).
per_unit() { awk -v t="$1" -v n="$2" -v s="$3" -v hz="$hz" 'BEGIN { printf "%.2f", (n > 0 ? t / hz / n * s : 0) }'; }

# Runs "$1 ours" and "$1 nginx" $2 times, alternating; each call prints one number (its figure).
# Sets figures_ours/figures_nginx (arrays) and ticks_ours/ticks_nginx (CPU over all tries).
# Also sets client_ticks_ours/client_ticks_nginx: the CPU of the clients those calls ran (curl,
# wrk, the load client), counted when this shell reaped them.
alternate() {
    local measure=$1 tries=$2 before client_before side value
    figures_ours=()
    figures_nginx=()
    ticks_ours=0
    ticks_nginx=0
    client_ticks_ours=0
    client_ticks_nginx=0
    for ((run = 0; run < tries; run++)); do
        for side in ours nginx; do
            before=$(cpu_ticks "$side")
            client_before=$(client_ticks)
            value=$("$measure" "$side")
            if [ "$side" = ours ]; then
                figures_ours+=("$value")
                ticks_ours=$((ticks_ours + $(cpu_ticks ours) - before))
                client_ticks_ours=$((client_ticks_ours + $(client_ticks) - client_before))
            else
                figures_nginx+=("$value")
                ticks_nginx=$((ticks_nginx + $(cpu_ticks nginx) - before))
                client_ticks_nginx=$((client_ticks_nginx + $(client_ticks) - client_before))
            fi
        done
    done
}

# CPU time (clock ticks) of this shell's reaped children so far.
client_ticks() { awk '{ print $16 + $17 }' /proc/$$/stat; }

base_url() {
    if [ "$1" = ours ]; then echo "https://127.0.0.1:$ours_port"; else echo "https://127.0.0.1:$nginx_tls_port"; fi
}

# --- 1 GiB over HTTPS and over plain HTTP -----------------------------------------------------
download_tls() {
    curl -sS --http1.1 --tlsv1.3 --cacert "$cert" -o /dev/null -w '%{speed_download}' \
        "$(base_url "$1")/$big_rel"
}
download_plain() {
    local port=$nginx_plain_port
    [ "$1" = ours ] && port=$ours_port
    curl -sS --http1.1 -o /dev/null -w '%{speed_download}' "http://127.0.0.1:$port/$big_rel"
}
size_label=$([ "$file_mib" = 1024 ] && echo "1 GiB" || echo "$file_mib MiB")
for mode in tls plain; do
    wants "$mode" || continue
    label="$size_label over HTTPS (TLS 1.3)"
    [ "$mode" = plain ] && label="$size_label over plain HTTP"
    echo "$label (median of $runs)..." >&2
    alternate "download_$mode" "$runs"
    echo "  MiB/s, ours: $(printf '%s\n' "${figures_ours[@]}" | awk '{printf "%.0f ", $1/1048576}'); nginx: $(printf '%s\n' "${figures_nginx[@]}" | awk '{printf "%.0f ", $1/1048576}')" >&2
    ours=$(median "${figures_ours[@]}")
    nginx=$(median "${figures_nginx[@]}")
    r=$(ratio "$ours" "$nginx")
    row "$label" "$(mib_s "$ours")" "$(mib_s "$nginx")" "$r" "$(verdict "$r" 1.0 min)"
    gib=$(awk -v n="$runs" -v m="$file_mib" 'BEGIN { print n * m / 1024 }')
    o=$(per_unit "$ticks_ours" "$gib" 1)
    n=$(per_unit "$ticks_nginx" "$gib" 1)
    cpu_row "s per GiB, $label" "$o s" "$n s" "$(ratio "$o" "$n")"
    # Over loopback the receiver's TCP work runs partly in the sender's context, and how much
    # depends on timing: server and client together are the steadier cost of a download.
    o=$(per_unit "$((ticks_ours + client_ticks_ours))" "$gib" 1)
    n=$(per_unit "$((ticks_nginx + client_ticks_nginx))" "$gib" 1)
    cpu_row "  with curl's, $label" "$o s" "$n s" "$(ratio "$o" "$n")"
done

# --- Small requests under wrk -------------------------------------------------------------------
requests_per_second() {
    wrk -t2 -c"$wrk_connections" -d"${wrk_seconds}s" "$(base_url "$1")$wrk_path" |
        awk '/^Requests\/sec:/ {print $2}'
}
wrk_rows() {
    local label=$1
    echo "  requests/s, ours: ${figures_ours[*]}; nginx: ${figures_nginx[*]}" >&2
    ours=$(median "${figures_ours[@]}")
    nginx=$(median "${figures_nginx[@]}")
    r=$(ratio "$ours" "$nginx")
    row "$label, req/s" "$ours" "$nginx" "$r" "$(verdict "$r" 1.0 min)"
    o=$(per_unit "$ticks_ours" "$(printf '%s\n' "${figures_ours[@]}" | awk -v s="$wrk_seconds" '{ n += $1 * s } END { print n }')" 1e6)
    n=$(per_unit "$ticks_nginx" "$(printf '%s\n' "${figures_nginx[@]}" | awk -v s="$wrk_seconds" '{ n += $1 * s } END { print n }')" 1e6)
    cpu_row "us per request, $label" "$o us" "$n us" "$(ratio "$o" "$n")"
}
if wants small; then
    wrk_connections=50
    for file in images.json index.json; do
        wrk_path="/streams/v1/$file"
        echo "$file of 20 images under wrk ($wrk_connections connections, ${wrk_seconds} s, median of $runs)..." >&2
        alternate requests_per_second "$runs"
        wrk_rows "$file (20 images, wrk -c$wrk_connections)"
    done
fi

# --- New TLS connections ------------------------------------------------------------------------
handshakes_per_second() {
    "$load" connect "$(base_url "$1")/streams/v1/index.json" "$cert" "$connections" 50 |
        awk '{ printf "%.0f", $2 / $1 }'
}
if wants handshakes; then
    echo "$connections new TLS connections fetching index.json (50 at a time, median of $runs)..." >&2
    alternate handshakes_per_second "$runs"
    echo "  connections/s, ours: ${figures_ours[*]}; nginx: ${figures_nginx[*]}" >&2
    ours=$(median "${figures_ours[@]}")
    nginx=$(median "${figures_nginx[@]}")
    r=$(ratio "$ours" "$nginx")
    row "new TLS connections + index.json, /s" "$ours" "$nginx" "$r" "$(verdict "$r" 1.0 min)"
    o=$(per_unit "$ticks_ours" $((connections * runs)) 1e6)
    n=$(per_unit "$ticks_nginx" $((connections * runs)) 1e6)
    cpu_row "us per new connection" "$o us" "$n us" "$(ratio "$o" "$n")"
fi

# --- A fleet at once ------------------------------------------------------------------------------
# Prints "aggregate_bytes_per_second slowest/median" of one fleet.
fleet() {
    "$load" fleet "$(base_url "$1")/$fleet_rel" "$cert" "$fleet_clients" >"$work/fleet.$1"
    head -n -1 "$work/fleet.$1" | sort -g | awk -v total="$(tail -n 1 "$work/fleet.$1")" '
        { t[NR] = $1 }
        END { split(total, a, " "); printf "%.0f:%.2f", a[2] / a[1], t[NR] / t[int((NR + 1) / 2)] }'
}
if wants fleet; then
    echo "$fleet_clients downloads of $fleet_mib MiB at once (median of $fleet_runs)..." >&2
    echo 5 >"/proc/$ours_pid/clear_refs" # resets VmHWM: the peak below is the fleet's
    alternate fleet "$fleet_runs"
    show() { printf '%s\n' "$@" | awk -F: '{ printf "%.0f MiB/s %s, ", $1 / 1048576, $2 }'; }
    echo "  aggregate, slowest/median: ours: $(show "${figures_ours[@]}"); nginx: $(show "${figures_nginx[@]}")" >&2
    hwm=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$ours_pid/status")
    ours=$(median "${figures_ours[@]%%:*}")
    nginx=$(median "${figures_nginx[@]%%:*}")
    r=$(ratio "$ours" "$nginx")
    row "fleet of $fleet_clients x $fleet_mib MiB, aggregate" "$(mib_s "$ours")" "$(mib_s "$nginx")" "$r" "$(verdict "$r" 1.0 min)"
    ours_spread=$(median "${figures_ours[@]##*:}")
    nginx_spread=$(median "${figures_nginx[@]##*:}")
    row "fleet, slowest / median client time" "$ours_spread" "$nginx_spread" "" "$(verdict "$ours_spread" 1.5 max) (<= 1.5)"
    row "fleet, our peak RSS (VmHWM)" "$hwm MiB" "" "" "$(verdict "$hwm" 128 max) (< 128 MiB)"
    gib=$(awk -v n="$fleet_runs" -v c="$fleet_clients" -v m="$fleet_mib" 'BEGIN { print n * c * m / 1024 }')
    o=$(per_unit "$ticks_ours" "$gib" 1)
    n=$(per_unit "$ticks_nginx" "$gib" 1)
    cpu_row "s per GiB, fleet" "$o s" "$n s" "$(ratio "$o" "$n")"
fi

# --- A large catalog under wrk ---------------------------------------------------------------------
if wants catalog; then
    start_ours "$large"
    nginx_tls_port=$nginx_large_port
    wrk_connections=100
    wrk_path=/streams/v1/images.json
    echo "images.json of $products products under wrk ($wrk_connections connections, median of $runs)..." >&2
    echo 5 >"/proc/$ours_pid/clear_refs"
    alternate requests_per_second "$runs"
    wrk_rows "images.json ($products products, wrk -c$wrk_connections)"
    hwm=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$ours_pid/status")
    row "our peak RSS under wrk (VmHWM)" "$hwm MiB" "" "" "$(verdict "$hwm" 64 max) (< 64 MiB)"
fi

echo
echo "simplestream-server vs nginx $("$nginx_bin" -v 2>&1 | sed 's/.*nginx\///'), 127.0.0.1, $(nproc) cores"
printf '%-40s %14s %14s %7s\n' "" "ours" "nginx" "ratio"
cat "$results"
echo
echo "server CPU time, all tries (lower is better; steadier than throughput on a busy machine)"
cat "$cpu_results"
