#!/usr/bin/env bash
# Prepare a lavapipe that has cooperative matrices, for testing the
# tensor-core matmul path on a machine without a GPU.
#
# Mesa's lavapipe offers VK_KHR_cooperative_matrix (8x8x8 f16->f32) from
# Mesa 25.1 on; Debian 12 ships 22.3. This unpacks Mesa and its libraries
# from Debian 13's backports, glibc included, into a private folder (nothing
# is installed system-wide), and writes a runner that starts a program with
# that folder's dynamic loader and driver. Use it as cargo's runner:
#
#   runner=$(bash scripts/lavapipe-coop.sh)
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$runner cargo test --test ops_matmul
#
# Only programs that do not start other programs belong under the runner:
# a child would inherit VK_DRIVER_FILES but not the loader.
# Prints the runner's path on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT="${BOOMGPU_COOP_ROOT:-$PWD/target/lavapipe-coop}"
RUNNER="$ROOT/run"
if [ -x "$RUNNER" ]; then
    echo "$RUNNER"
    exit 0
fi
if [ "$(uname -m)" != x86_64 ] || ! command -v apt-get >/dev/null; then
    echo "lavapipe-coop: needs an x86-64 Debian-like system with apt-get" >&2
    exit 1
fi

mkdir -p "$ROOT/apt/lists/partial" "$ROOT/debs"
cat >"$ROOT/apt/trixie.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
APT=(-o "Dir::Etc::SourceList=$ROOT/apt/trixie.sources" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$ROOT/apt/lists" -o Dir::State::Status=/dev/null
    -o APT::Architecture=amd64 -o Debug::NoLocking=1 -o "Dir::Cache=$ROOT/apt/cache")
mkdir -p "$ROOT/apt/cache/archives/partial"
echo "lavapipe-coop: reading Debian 13 package lists" >&2
apt-get "${APT[@]}" update >/dev/null
# The newest Mesa for Debian 13 (backports), and everything it needs.
MESA="mesa-vulkan-drivers/trixie-backports"
mapfile -t PKGS < <(apt-cache "${APT[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances \
    "$MESA" libvulkan1 2>/dev/null | grep -v '^ ' | grep -v '<' | grep -vx mesa-vulkan-drivers | sort -u)
echo "lavapipe-coop: downloading Mesa and ${#PKGS[@]} libraries" >&2
(cd "$ROOT/debs" && apt-get "${APT[@]}" download "$MESA" "${PKGS[@]}" >/dev/null 2>&1)

rm -rf "$ROOT/sysroot"
for deb in "$ROOT"/debs/*.deb; do
    dpkg-deb -x "$deb" "$ROOT/sysroot"
done
LIB="$ROOT/sysroot/usr/lib/x86_64-linux-gnu"
ICD="$ROOT/lvp_icd.json"
sed "s#\"library_path\": *\"[^\"]*\"#\"library_path\": \"$LIB/libvulkan_lvp.so\"#" \
    "$ROOT/sysroot/usr/share/vulkan/icd.d/lvp_icd.json" >"$ICD"
cat >"$RUNNER.tmp" <<EOF
#!/bin/sh
# Runs a program with Debian 13's loader, libraries and lavapipe.
export VK_DRIVER_FILES="$ICD"
exec "$LIB/ld-linux-x86-64.so.2" --library-path "$LIB" "\$@"
EOF
chmod +x "$RUNNER.tmp"
mv "$RUNNER.tmp" "$RUNNER"
echo "lavapipe-coop: ready ($(ls "$ROOT"/debs | grep -o '^mesa-vulkan-drivers_[^_]*'))" >&2
echo "$RUNNER"
