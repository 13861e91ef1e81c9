#!/usr/bin/env bash
# Makes a local Python base image for the Dockerfile when none can be pulled (offline or
# air-gapped Docker hosts): a Debian bookworm root made with debootstrap, with python3, pip and
# venv, imported into Docker.
#
#   sudo deploy/make-base-image.sh [TAG]          # TAG defaults to chatservice-base:bookworm
#   docker build --build-arg PYTHON_IMAGE=chatservice-base:bookworm -t chatservice .
#
# The Debian mirror is the one this machine's apt uses (or DEBIAN_MIRROR). Certificate
# authorities added to this machine (/usr/local/share/ca-certificates, e.g. a company proxy's)
# are trusted in the image too, so that pip inside `docker build` reaches the same index.
# Needs root, debootstrap and a running Docker daemon; takes a few minutes.
set -euo pipefail

TAG="${1:-chatservice-base:bookworm}"
SUITE="${SUITE:-bookworm}"
DOCKER="${DOCKER:-docker}"

mirror_from_apt() {
    # Missing files and awk's early exit are not errors here.
    # deb822 sources ("URIs: http://...") or one-line sources ("deb http://... bookworm main").
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | awk '
            /^[[:space:]]*#/ { next }
            $1 == "URIs:" && $2 !~ /security/ { print $2; exit }
            $1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { if ($i !~ /security/) { print $i; exit } break } }' || true
}

MIRROR="${DEBIAN_MIRROR:-$(mirror_from_apt)}"
if [ -z "$MIRROR" ]; then
    echo "make-base-image: no Debian mirror in /etc/apt/sources.list*; set DEBIAN_MIRROR" >&2
    exit 2
fi
[ "$(id -u)" = 0 ] || { echo "make-base-image: debootstrap needs root" >&2; exit 2; }

ROOTFS="$(mktemp -d /tmp/chatservice-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

echo "make-base-image: debootstrap $SUITE from $MIRROR" >&2
debootstrap --variant=minbase \
    --include=python3,python3-pip,python3-venv,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >&2

if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >&2
fi
# The same mirror inside the image, and no caches or lists in it.
echo "deb $MIRROR $SUITE main" > "$ROOTFS/etc/apt/sources.list"
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/tmp/* \
    "$ROOTFS"/var/log/*.log

tar --numeric-owner -C "$ROOTFS" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    - "$TAG" >&2
echo "$TAG"
