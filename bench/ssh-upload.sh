#!/usr/bin/env bash
# Upload the same file with OpenSSH's scp to simplestream-server's SSH gateway and to
# OpenSSH's own sshd (internal-sftp), alternating, and compare wall time and server CPU.
#
# Usage: bench/ssh-upload.sh            (from the repository; builds the release binary)
# Environment:
#   ROUNDS=3        rounds per mode (each round uploads once to each server)
#   SIZE_MIB=1024   size of the uploaded root image
#   WORK_DIR=…      where the data directories live (default: a new dir under /var/tmp, on
#                   disk like a real server's; a tmpfs would hide the cost of writing)
#   BIN=…           the simplestream-server binary (default: build and use the release one)
#   MODES="sftp-aes128gcm sftp-default scp-O-aes128gcm"
#
# Per mode it prints the median wall time of each server and their ratio (ours/OpenSSH),
# and the server CPU seconds per GiB: ours is user+sys of its process from /proc/<pid>/stat
# (all threads, the background fsync of the upload included); sshd's is the CPU of all its
# processes, listener and per-connection ones, exited ones included, from a cgroup it is put
# in (its per-connection processes are not all reaped by the listener, so the listener's
# cutime/cstime would miss most of the work). Then the
# time from the end of an upload of a 1 GiB split image to the image being listed after
# `ssh host import`, and our peak RSS.
#
# Needs: openssh-client openssh-server squashfs-tools xz-utils coreutils passwd (useradd:
# run as root; sshd serves a throwaway user, removed at the end).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
MODES=${MODES:-"sftp-aes128gcm sftp-default scp-O-aes128gcm"}
REPO=$(cd "$(dirname "$0")/.." && pwd)
CLK_TCK=$(getconf CLK_TCK)

for tool in ssh scp ssh-keygen mksquashfs xz tar /usr/sbin/sshd; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: apt-get install openssh-client openssh-server squashfs-tools xz-utils" >&2
        exit 1
    }
done

if [[ -z ${BIN:-} ]]; then
    (cd "$REPO" && cargo build --release --quiet)
    BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/simplestream-server"
fi

WORK=${WORK_DIR:-$(mktemp -d /var/tmp/sss-bench.XXXXXX)}
mkdir -p "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ -n ${SSHD_CGROUP:-} ]]; then
        rmdir "$SSHD_CGROUP" 2>/dev/null || true
    fi
    if [[ -n ${CREATED_USER:-} ]]; then
        userdel "$BENCH_USER" 2>/dev/null || true
    fi
    if [[ -z ${WORK_DIR:-} ]]; then
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

log() { printf '%s\n' "$*" >&2; }

# calc EXPR…: prints each awk expression's value on one line.
calc() {
    local expr
    for expr in "$@"; do
        awk "BEGIN { printf \"%.4f \", $expr }"
    done
    echo
}

# --- keys, inputs --------------------------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -C bench@client -f "$WORK/client_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/sshd_host_key"

log "making a ${SIZE_MIB} MiB squashfs root (uncompressed random data) and metadata tarballs"
mkdir -p "$WORK/tree"
head -c "$((SIZE_MIB * 1024 * 1024 - 1024 * 1024))" /dev/urandom >"$WORK/tree/blob"
mksquashfs "$WORK/tree" "$WORK/root.squashfs" -noappend -quiet -no-progress -noI -noD -noF -noX \
    -all-root >/dev/null
rm -rf "$WORK/tree"
ROOT_BYTES=$(stat -c %s "$WORK/root.squashfs")

metadata_tarball() { # $1 = output, $2 = creation date (unix)
    local dir
    dir=$(mktemp -d "$WORK/meta.XXXXXX")
    cat >"$dir/metadata.yaml" <<EOF
architecture: x86_64
creation_date: $2
properties:
  os: benchos
  release: "1"
  variant: default
  description: benchmark image $2
templates: {}
EOF
    tar -C "$dir" -cJf "$1" metadata.yaml
    rm -rf "$dir"
}
metadata_tarball "$WORK/lxd.tar.xz" 1764244800

# --- our server ----------------------------------------------------------------------------
OURS="$WORK/ours"
mkdir -p "$OURS"
printf 'role="admin" %s\n' "$(cat "$WORK/client_key.pub")" >"$OURS/authorized_keys"
"$BIN" --data-dir "$OURS" serve --https-listen 127.0.0.1:0 --ssh-listen 127.0.0.1:0 \
    >"$WORK/ours.out" 2>"$WORK/ours.err" &
OURS_PID=$!
PIDS+=("$OURS_PID")
for _ in $(seq 300); do
    grep -qx ready "$WORK/ours.out" 2>/dev/null && break
    kill -0 "$OURS_PID" 2>/dev/null || { cat "$WORK/ours.err" >&2; exit 1; }
    sleep 0.1
done
OURS_PORT=$(sed -n 's/^listening ssh .*:\([0-9]*\)$/\1/p' "$WORK/ours.out")
[[ -n $OURS_PORT ]] || { echo "our server did not start" >&2; exit 1; }
OURS_AREA="$OURS/incoming/bench@client"

# --- OpenSSH's sshd ------------------------------------------------------------------------
# sshd serves a throwaway user whose login shell is /bin/sh: root's bash would source
# ~/.bashrc for every `scp -t` (a remote command), which here costs sshd 0.4 s a command.
BENCH_USER=sss-bench
if ! id "$BENCH_USER" >/dev/null 2>&1; then
    # '*': no password, but not a locked account (sshd refuses locked ones without PAM).
    useradd --no-create-home --home-dir "$WORK/sshd-home" --shell /bin/sh --password '*' \
        "$BENCH_USER"
    CREATED_USER=1
fi
mkdir -p /run/sshd "$WORK/sshd-uploads" "$WORK/sshd-home"
chown "$BENCH_USER" "$WORK/sshd-uploads" "$WORK/sshd-home"
chmod 755 "$WORK" # the user reaches its directories and authorized_keys through it
# A port nothing listens on (sshd cannot be given port 0 and tell which it got).
for _ in $(seq 100); do
    SSHD_PORT=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$SSHD_PORT") 2>/dev/null || break
done
cp "$WORK/client_key.pub" "$WORK/sshd_authorized_keys"
chmod 644 "$WORK/sshd_authorized_keys"
cat >"$WORK/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $WORK/sshd_host_key
AuthorizedKeysFile $WORK/sshd_authorized_keys
PidFile $WORK/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
EOF
# A cgroup counts the CPU of every sshd process, including those that have exited.
if [[ -w /sys/fs/cgroup/cpuacct ]]; then
    SSHD_CGROUP=/sys/fs/cgroup/cpuacct/sss-bench-$$
    mkdir "$SSHD_CGROUP"
    sshd_cpu_seconds() { calc "$(cat "$SSHD_CGROUP/cpuacct.usage") / 1e9"; }
elif [[ -f /sys/fs/cgroup/cgroup.controllers ]] && mkdir "/sys/fs/cgroup/sss-bench-$$" 2>/dev/null; then
    SSHD_CGROUP=/sys/fs/cgroup/sss-bench-$$
    sshd_cpu_seconds() { calc "$(awk '$1 == "usage_usec" {print $2}' "$SSHD_CGROUP/cpu.stat") / 1e6"; }
else
    echo "cannot create a cgroup to count sshd's CPU (needs root and cgroup v1 cpuacct or v2)" >&2
    exit 1
fi
/usr/sbin/sshd -D -f "$WORK/sshd_config" -E "$WORK/sshd.log" &
SSHD_PID=$!
PIDS+=("$SSHD_PID")
echo "$SSHD_PID" >"$SSHD_CGROUP/cgroup.procs"

# One key exchange for both servers (OpenSSH 9.2's default, sntrup761x25519, costs this
# machine ~0.1-0.2 s a connection and russh does not offer it): the comparison is about
# moving bytes, not about key exchange.
SSH_OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
    -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR -o KexAlgorithms=curve25519-sha256
    -i "$WORK/client_key")
for _ in $(seq 100); do
    ssh "${SSH_OPTS[@]}" -p "$SSHD_PORT" "$BENCH_USER@127.0.0.1" true 2>/dev/null && break
    sleep 0.1
done

# --- measuring -----------------------------------------------------------------------------
# CPU seconds (user+sys) of one process, all its threads.
process_cpu_seconds() {
    local stat
    stat=$(cut -d')' -f2- "/proc/$1/stat")
    # shellcheck disable=SC2086
    set -- $stat
    # After the ")": field 1 is the state, so utime is $12 and stime $13.
    calc "(${12} + ${13}) / $CLK_TCK"
}

# Waits until sshd's per-connection processes are gone (reaped: their CPU is counted).
wait_sshd_children() {
    for _ in $(seq 200); do
        [[ -z $(cat "/proc/$SSHD_PID/task/$SSHD_PID/children" 2>/dev/null) ]] && return
        sleep 0.05
    done
    log "warning: sshd children still running"
}

# Waits until our server's CPU time stops growing (its background fsync of the upload is
# over): that CPU is part of the upload's cost.
wait_cpu_settled() {
    local before after
    before=$(process_cpu_seconds "$1")
    for _ in $(seq 60); do
        sleep 0.25
        after=$(process_cpu_seconds "$1")
        [[ $after == "$before" ]] && return
        before=$after
    done
}

now() { date +%s.%N; }

# upload <server: ours|sshd> <mode>: prints "wall_seconds cpu_seconds"
upload() {
    local server=$1 mode=$2 port dest args=()
    case $mode in
    sftp-aes128gcm) args=(-c aes128-gcm@openssh.com) ;;
    sftp-default) args=() ;;
    scp-O-aes128gcm) args=(-O -c aes128-gcm@openssh.com) ;;
    *) echo "unknown mode $mode" >&2; exit 1 ;;
    esac
    if [[ $server == ours ]]; then
        port=$OURS_PORT dest="upload@127.0.0.1:root.squashfs"
        rm -f "$OURS_AREA/root.squashfs"
    else
        port=$SSHD_PORT dest="$BENCH_USER@127.0.0.1:$WORK/sshd-uploads/root.squashfs"
        rm -f "$WORK/sshd-uploads/root.squashfs"
    fi
    sync
    local cpu0 cpu1 t0 t1
    if [[ $server == ours ]]; then cpu0=$(process_cpu_seconds "$OURS_PID"); else cpu0=$(sshd_cpu_seconds); fi
    t0=$(now)
    scp "${SSH_OPTS[@]}" "${args[@]}" -P "$port" "$WORK/root.squashfs" "$dest"
    t1=$(now)
    if [[ $server == ours ]]; then
        wait_cpu_settled "$OURS_PID"
        cpu1=$(process_cpu_seconds "$OURS_PID")
    else
        wait_sshd_children
        cpu1=$(sshd_cpu_seconds)
    fi
    calc "$t1 - $t0" "$cpu1 - $cpu0"
}

median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

# Every root upload to our server follows a metadata tarball, as a publisher's does, so the
# server hashes the root twice while it arrives (its sha256 and the combined fingerprint).
scp "${SSH_OPTS[@]}" -P "$OURS_PORT" "$WORK/lxd.tar.xz" 127.0.0.1:

GIB=$(calc "$ROOT_BYTES / 1073741824")
printf '\n%-18s %10s %10s %7s   %12s %12s %7s\n' mode "ours s" "sshd s" ratio "ours CPU/GiB" "sshd CPU/GiB" ratio
for mode in $MODES; do
    : >"$WORK/$mode.ours" && : >"$WORK/$mode.sshd"
    for round in $(seq "$ROUNDS"); do
        if ((round % 2)); then order="ours sshd"; else order="sshd ours"; fi
        for server in $order; do
            upload "$server" "$mode" >>"$WORK/$mode.$server"
            log "$mode round $round $server: $(tail -1 "$WORK/$mode.$server")"
        done
    done
    ow=$(cut -d' ' -f1 "$WORK/$mode.ours" | median)
    sw=$(cut -d' ' -f1 "$WORK/$mode.sshd" | median)
    oc=$(cut -d' ' -f2 "$WORK/$mode.ours" | median)
    sc=$(cut -d' ' -f2 "$WORK/$mode.sshd" | median)
    read -r wall_ratio ours_gib sshd_gib cpu_ratio < <(calc "$ow / $sw" "$oc / $GIB" "$sc / $GIB" "$oc / $sc")
    printf '%-18s %10.2f %10.2f %7.2f   %12.2f %12.2f %7.2f\n' "$mode" "$ow" "$sw" \
        "$wall_ratio" "$ours_gib" "$sshd_gib" "$cpu_ratio"
done

# --- import of a just-uploaded split image -------------------------------------------------
# "import s": the `ssh host import` command as the client sees it (connection included);
# "server ms": the import itself, from our audit log; "to listed s": until `list` shows it.
# "synced": the same after `sync`, i.e. with nothing of the upload left to flush.
printf '\n%-6s %10s %10s %12s %18s\n' round "import s" "server ms" "to listed s" "synced: import s"
for round in $(seq "$ROUNDS"); do
    for variant in plain synced; do
        # A new version each time: serials have minute resolution, so step by hours.
        created=$((1764244800 + round * 7200))
        [[ $variant == synced ]] && created=$((created + 3600))
        metadata_tarball "$WORK/lxd.tar.xz" "$created"
        scp "${SSH_OPTS[@]}" -c aes128-gcm@openssh.com -P "$OURS_PORT" \
            "$WORK/lxd.tar.xz" "$WORK/root.squashfs" 127.0.0.1:
        [[ $variant == synced ]] && sync
        t0=$(now)
        ssh "${SSH_OPTS[@]}" -p "$OURS_PORT" 127.0.0.1 import lxd.tar.xz root.squashfs >/dev/null
        t1=$(now)
        until ssh "${SSH_OPTS[@]}" -p "$OURS_PORT" 127.0.0.1 list --format json | grep -q "benchmark image $created"; do
            sleep 0.01
        done
        t2=$(now)
        if [[ $variant == plain ]]; then
            read -r import_s listed_s < <(calc "$t1 - $t0" "$t2 - $t0")
            server_ms=$(grep '"name":"import"' "$OURS/audit.log" | tail -1 | sed 's/.*"ms":\([0-9]*\).*/\1/')
        else
            read -r synced_s < <(calc "$t1 - $t0")
        fi
    done
    printf '%-6s %10.3f %10s %12.3f %18.3f\n' "$round" "$import_s" "$server_ms" "$listed_s" "$synced_s"
done

# What one SSH command costs each server, connection included, for scale.
for server in ours sshd; do
    : >"$WORK/rtt.$server"
    for _ in $(seq 5); do
        t0=$(now)
        if [[ $server == ours ]]; then
            ssh "${SSH_OPTS[@]}" -p "$OURS_PORT" 127.0.0.1 version >/dev/null
        else
            ssh "${SSH_OPTS[@]}" -p "$SSHD_PORT" "$BENCH_USER@127.0.0.1" true
        fi
        t1=$(now)
        calc "$t1 - $t0" >>"$WORK/rtt.$server"
    done
done
printf '\none ssh command, median of 5: ours %.3f s (version), sshd %.3f s (true)\n' \
    "$(median <"$WORK/rtt.ours")" "$(median <"$WORK/rtt.sshd")"
printf '\nour peak RSS: %s\n' "$(grep VmHWM "/proc/$OURS_PID/status" | awk '{printf "%.1f MiB", $2/1024}')"
printf 'file: %s bytes; rounds: %s; server log: %s\n' "$ROOT_BYTES" "$ROUNDS" "$WORK/ours.err"
