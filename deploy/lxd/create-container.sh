#!/usr/bin/env bash
# Runs simplestream-server in an LXD or Incus system container on this host.
#
#   deploy/lxd/create-container.sh [options]
#
# Creates the container (default name `simplestream`) when it does not exist, installs the
# binary and the hardened systemd unit inside, maps the HTTPS and SSH ports to the host with
# proxy devices, optionally installs a first admin key, and prints how clients connect.
# Idempotent: run it again to upgrade the binary; the data directory is kept.
#
# Options:
#   --name NAME            container name (default: simplestream)
#   --image IMAGE          image to create it from (default: images:debian/12)
#   --binary FILE          the simplestream-server binary to install (default: the one on PATH,
#                          else target/release/simplestream-server next to this script)
#   --https-port PORT      host port for HTTPS (default: 8443)
#   --ssh-port PORT        host port for SSH (default: 2222)
#   --listen ADDRESS       host address the ports listen on (default: 0.0.0.0)
#   --admin-key FILE       an SSH public key to install with the admin role
#   --client lxc|incus     which client to use (default: the one installed; lxc if both)
#   --dry-run              print every command instead of running it
#   -h, --help             show this help
set -euo pipefail

name=simplestream
image=images:debian/12
binary=
https_port=8443
ssh_port=2222
listen=0.0.0.0
admin_key=
client=
dry_run=false

here=$(cd "$(dirname "$0")" && pwd)
unit="$(cd "$here/../systemd" && pwd)/simplestream-server.service"
data=/var/lib/simplestream-server

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die() {
    echo "create-container: $*" >&2
    exit 1
}

while (($#)); do
    case "$1" in
        --name) name=${2:?--name needs a value}; shift 2 ;;
        --image) image=${2:?--image needs a value}; shift 2 ;;
        --binary) binary=${2:?--binary needs a value}; shift 2 ;;
        --https-port) https_port=${2:?--https-port needs a value}; shift 2 ;;
        --ssh-port) ssh_port=${2:?--ssh-port needs a value}; shift 2 ;;
        --listen) listen=${2:?--listen needs a value}; shift 2 ;;
        --admin-key) admin_key=${2:?--admin-key needs a value}; shift 2 ;;
        --client) client=${2:?--client needs a value}; shift 2 ;;
        --dry-run) dry_run=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

for port in "$https_port" "$ssh_port"; do
    if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
        die "$port is not a port number"
    fi
done
if [[ -z "$client" ]]; then
    if command -v lxc >/dev/null; then client=lxc
    elif command -v incus >/dev/null; then client=incus
    else die "neither lxc nor incus is installed; install one, or pass --client"
    fi
fi
[[ "$client" == lxc || "$client" == incus ]] || die "--client must be lxc or incus"
if [[ -z "$binary" ]]; then
    binary=$(command -v simplestream-server || echo "$here/../../target/release/simplestream-server")
fi
[[ -f "$binary" ]] || die "no binary at $binary; build it (cargo build --release) or pass --binary"
[[ -f "$unit" ]] || die "the unit file $unit is missing"
[[ -z "$admin_key" || -f "$admin_key" ]] || die "no key file at $admin_key"

# Runs a command, or prints it in a dry run. Queries that change nothing always run.
run() {
    if $dry_run; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

in_container() {
    run "$client" exec "$name" -- "$@"
}

exists() {
    "$client" info "$name" >/dev/null 2>&1
}

# 1. The container.
if exists; then
    echo "container $name exists: upgrading the binary, keeping the data" >&2
    run "$client" start "$name" 2>/dev/null || true
else
    run "$client" launch "$image" "$name"
fi
if ! $dry_run; then
    for _ in $(seq 60); do
        "$client" exec "$name" -- systemctl is-system-running --wait >/dev/null 2>&1 && break
        "$client" exec "$name" -- test -d /run/systemd/system >/dev/null 2>&1 && break
        sleep 1
    done
fi

# 2. The binary and the unit; a restart picks up a new binary.
run "$client" file push "$binary" "$name/usr/local/bin/simplestream-server" --mode 0755
run "$client" file push "$unit" "$name/etc/systemd/system/simplestream-server.service" --mode 0644
in_container systemctl daemon-reload
in_container systemctl enable simplestream-server
in_container systemctl restart simplestream-server

# 3. Wait for the first start to create the data directory and certificate.
if ! $dry_run; then
    for _ in $(seq 60); do
        "$client" exec "$name" -- test -f "$data/tls/server.crt" && break
        sleep 1
    done
    "$client" exec "$name" -- test -f "$data/tls/server.crt" ||
        die "the service did not start; see: $client exec $name -- journalctl -u simplestream-server"
fi

# 4. The first admin key (appended once; the server re-reads the file when it changes).
if [[ -n "$admin_key" ]]; then
    key=$(head -n 1 "$admin_key")
    [[ "$key" == ssh-* || "$key" == ecdsa-* || "$key" == sk-* ]] || die "$admin_key does not look like an SSH public key"
    line="role=\"admin\" $key"
    if $dry_run || ! "$client" exec "$name" -- grep -qxF "$line" "$data/authorized_keys" 2>/dev/null; then
        run "$client" exec "$name" -- sh -c "printf '%s\n' \"\$1\" >> $data/authorized_keys" sh "$line"
    fi
fi

# 5. Proxy devices: host ports to the service inside (replaced when they exist).
for device in https:"$https_port":8443 ssh:"$ssh_port":2222; do
    IFS=: read -r dev host_port inner_port <<<"$device"
    if ! $dry_run && "$client" config device show "$name" | grep -q "^$dev:"; then
        run "$client" config device remove "$name" "$dev"
    fi
    run "$client" config device add "$name" "$dev" proxy "listen=tcp:$listen:$host_port" "connect=tcp:127.0.0.1:$inner_port"
done

# 6. How to connect.
host=$listen
[[ "$host" == 0.0.0.0 || "$host" == "::" ]] && host=$(hostname -f 2>/dev/null || hostname)
echo
echo "simplestream-server runs in container $name."
echo "Trust its certificate and add it as a remote (the server's own instructions follow):"
# As the service's own (dynamic) user, so that nothing in the data directory becomes root's.
# shellcheck disable=SC2016 # expanded by the shell inside the container
in_container sh -c 'exec setpriv --reuid="$(stat -c %u "$1")" --regid="$(stat -c %g "$1")" --clear-groups simplestream-server --data-dir "$1" remote-info' sh "$data"
echo
echo "The certificate as a file on this host:"
echo "  $client file pull $name$data/tls/server.crt ./$name.crt"
echo "Remote for LXD:   lxc remote add $name https://$host:$https_port --protocol=simplestreams"
echo "Remote for Incus: incus remote add $name https://$host:$https_port --protocol=simplestreams"
echo "Uploads:          scp -P $ssh_port image.tar.xz root.squashfs upload@$host:"
echo "                  ssh -p $ssh_port upload@$host import image.tar.xz root.squashfs"
