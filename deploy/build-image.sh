#!/usr/bin/env bash
# Builds the Kiln container image from this checkout.
#
#   deploy/build-image.sh                 # release build, tagged kiln:latest
#   TAG=kiln:test PROFILE=dev deploy/build-image.sh
#
# The binary is linked statically against glibc (and libstdc++, for fdk-aac) with
# `-C target-feature=+crt-static`; `--target` keeps that flag away from build scripts and proc
# macros, which must stay dynamic. The image is FROM scratch: see deploy/Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-release}"
TAG="${TAG:-kiln:latest}"
TARGET="$(rustc -vV | sed -n 's/^host: //p')"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

case "$TARGET" in
  *-linux-gnu) ;;
  *) echo "build-image: a static build needs a Linux glibc host, not $TARGET" >&2; exit 1 ;;
esac
[ -r "$CA_BUNDLE" ] || { echo "build-image: no CA bundle at $CA_BUNDLE (install ca-certificates or set CA_BUNDLE)" >&2; exit 1; }

echo "build-image: cargo build -p kiln --profile $PROFILE --target $TARGET (static)"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --locked -p kiln --profile "$PROFILE" --target "$TARGET"
dir="$PROFILE"; [ "$PROFILE" = dev ] && dir=debug
bin="$CARGO_TARGET_DIR/$TARGET/$dir/kiln"

# A dynamic binary would start on the build host and fail in the image with "no such file".
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
  echo "build-image: $bin is not statically linked" >&2; exit 1
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$stage/data/var/lib/kiln" "$stage/data/etc/kiln/tls"
chmod 1777 "$root/tmp"
objcopy --strip-debug "$bin" "$root/usr/local/bin/kiln"
cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
echo 'kiln:x:10001:10001:kiln:/var/lib/kiln:/sbin/nologin' > "$root/etc/passwd"
echo 'kiln:x:10001:' > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
# Two tarballs, so ownership is set without root on the build host: everything root's, except
# the scheduler's data directory and /etc/kiln/tls (where `kiln tls init` writes in compose),
# which belong to the image's user (a volume mounted there inherits it).
tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$stage/rootfs.tar" .
tar --numeric-owner --owner=10001 --group=10001 -C "$stage/data" -cf "$stage/data.tar" var/lib/kiln etc/kiln/tls
rm -rf "$root" "$stage/data"
cp deploy/Dockerfile "$stage/Dockerfile"

docker build --quiet -t "$TAG" "$stage" >/dev/null
size="$(docker image inspect -f '{{.Size}}' "$TAG")"
echo "build-image: $TAG built ($((size / 1024 / 1024)) MiB)"
