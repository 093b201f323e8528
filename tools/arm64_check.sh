#!/usr/bin/env bash
# Check the README's Raspberry Pi (arm64) install on an emulated arm64 Debian trixie, and record
# what it does into benchmarks/results/arm64/.
#
#   sudo tools/arm64_check.sh            # everything: install, jobs, torch footprint
#   sudo tools/arm64_check.sh --no-footprint
#
# Needs root (debootstrap, chroot, bind mounts) and Debian's package registry. Steps:
#   1. apt-get install qemu-user-static debootstrap binfmt-support where missing, and make sure
#      the kernel runs aarch64 binaries through qemu (binfmt_misc).
#   2. Build an arm64 Debian trixie root with debootstrap once and cache it in $ARM64_ROOT
#      (default /work/.cache/arm64-trixie); later runs reuse it (apt then installs nothing new).
#   3. Bind-mount /proc /dev /sys into it (a trap unmounts them however the script ends), copy
#      this working tree into it (tracked and untracked-but-not-ignored files: what you have, not
#      only what is committed), and install exactly as the README's "Install on a Raspberry Pi
#      (arm64)" says (APT_PACKAGES and the venv / pip lines below; tests/test_arm64.py checks
#      that the two agree).
#   4. Inside the emulated root: tools/arm64_jobs.py (train, budgeted train, export, evaluate)
#      and tools/torch_footprint.py, one emulated process at a time.
#
# Not part of CI: emulation is tens of times slower than native (a torch import takes ~1 min);
# the whole check takes 20-40 minutes on 2 cores, most of it the first install.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${ARM64_ROOT:-/work/.cache/arm64-trixie}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
RESULTS=${ARM64_RESULTS:-$REPO/benchmarks/results/arm64}
FOOTPRINT=1
for arg in "$@"; do
    case $arg in
        --no-footprint) FOOTPRINT=0 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "arm64_check: unknown option $arg (known: --no-footprint, --help)." >&2; exit 2 ;;
    esac
done

# Keep in step with the README ("Install on a Raspberry Pi (arm64)"); tests/test_arm64.py
# compares this list with the README's apt line.
APT_PACKAGES="python3-torch python3-numpy python3-psutil python3-safetensors python3-tqdm python3-onnx python3-onnxruntime python3-venv python3-setuptools"
SRC=/opt/edge-trgl          # where the project is copied inside the root
VENV=/opt/edge-trgl/.venv   # the README's venv, inside the project folder as on the Pi
WORK=/tmp/arm64-check       # run directories inside the root
OUT=/tmp/arm64-results      # JSON records inside the root, copied to $RESULTS at the end

log() { echo "arm64_check: $*" >&2; }
die() { log "$*"; exit 2; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and bind mounts need it): sudo $0"

# --- 1. tools and binfmt ---------------------------------------------------------------------
missing=""
command -v qemu-aarch64-static >/dev/null || missing="$missing qemu-user-static"
command -v debootstrap >/dev/null || missing="$missing debootstrap"
command -v update-binfmts >/dev/null || missing="$missing binfmt-support"
if [ -n "$missing" ]; then
    log "installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi
# Containers often start without binfmt_misc mounted; without it the kernel cannot hand aarch64
# binaries to qemu and chroot fails with "Exec format error".
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64
fi
QEMU_VERSION=$(qemu-aarch64-static --version | head -1)

# --- 2. the cached arm64 root --------------------------------------------------------------------
if [ ! -e "$ROOT/.edge-trgl-root-ok" ]; then
    log "building the arm64 trixie root in $ROOT (debootstrap, ~15 minutes under emulation)"
    rm -rf "$ROOT.partial"
    mkdir -p "$(dirname "$ROOT")"
    t0=$(date +%s)
    debootstrap --arch=arm64 --variant=minbase trixie "$ROOT.partial" "$MIRROR"
    # Built aside and renamed when complete, so an interrupted build is never reused.
    rm -rf "$ROOT"
    mv "$ROOT.partial" "$ROOT"
    echo "debootstrap --arch=arm64 --variant=minbase trixie $MIRROR: $(( $(date +%s) - t0 )) s" \
        > "$ROOT/.edge-trgl-root-ok"
else
    log "reusing the arm64 root in $ROOT"
fi

# --- 3. mounts (always undone), project copy, the README's install ----------------------------
# /sys and /dev recursively: the memory cgroup the budgeted job uses lives in a mount below /sys
# (/sys/fs/cgroup/memory), and /dev/shm, /dev/pts are mounts of their own. --make-rslave first, so
# that unmounting them here can never propagate to (and unmount) the host's own /sys or /dev mounts.
MOUNTED=""
cleanup() {
    local m
    for m in $MOUNTED; do  # reverse order of mounting
        umount -R "$ROOT/$m" 2>/dev/null || umount -R -l "$ROOT/$m" 2>/dev/null \
            || log "could not unmount $ROOT/$m"
    done
}
trap cleanup EXIT INT TERM
for m in proc sys dev; do
    mkdir -p "$ROOT/$m"
    if ! mountpoint -q "$ROOT/$m"; then
        if [ "$m" = proc ]; then
            mount --bind /proc "$ROOT/proc"
        else
            mount --rbind "/$m" "$ROOT/$m"
            mount --make-rslave "$ROOT/$m"
        fi
        MOUNTED="$m $MOUNTED"
    fi
done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"  # apt inside the root needs the host's resolver

in_root() { chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
[ "$(in_root uname -m)" = aarch64 ] || die "the root does not run as aarch64 (uname -m: $(in_root uname -m))"

log "copying the working tree to $ROOT$SRC"
rm -rf "$ROOT$SRC" "$ROOT$WORK" "$ROOT$OUT"
mkdir -p "$ROOT$SRC"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
    | tar --null -T - -cf -) | tar -xf - -C "$ROOT$SRC"
GIT_HEAD=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git -C "$REPO" status --porcelain 2>/dev/null | wc -l)

log "installing as the README says (apt, venv --system-site-packages, pip --no-deps)"
t0=$(date +%s)
in_root apt-get update -qq
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $APT_PACKAGES
t_apt=$(( $(date +%s) - t0 ))
t0=$(date +%s)
in_root sh -c "cd $SRC && python3 -m venv --system-site-packages .venv && . .venv/bin/activate \
    && pip install --no-deps --no-build-isolation -e . && edge-trgl env"
t_venv=$(( $(date +%s) - t0 ))
mkdir -p "$ROOT$OUT"
in_root sh -c "cd $SRC && . .venv/bin/activate && edge-trgl env --json > $OUT/env.json"

# --- 4. the jobs, then the footprint, one emulated process tree at a time ----------------------
extra=$(printf '{"emulated": true, "emulator": "%s", "host_kernel": "%s", "host_machine": "%s", "git_head": "%s", "uncommitted_files": %s, "apt_install_s": %s, "venv_pip_install_s": %s, "apt_packages": "%s", "debootstrap": "%s"}' \
    "$QEMU_VERSION" "$(uname -r)" "$(uname -m)" "$GIT_HEAD" "$GIT_DIRTY" "$t_apt" "$t_venv" \
    "$APT_PACKAGES" "$(cat "$ROOT/.edge-trgl-root-ok")")
status=0
in_root sh -c "cd $SRC && . .venv/bin/activate && python tools/arm64_jobs.py --out $OUT --work $WORK --extra-env '$extra'" || status=1
if [ "$FOOTPRINT" = 1 ]; then
    in_root sh -c "cd $SRC && . .venv/bin/activate && python tools/torch_footprint.py --out $OUT/footprint-aarch64.json" || status=1
fi
mkdir -p "$RESULTS"
cp "$ROOT$OUT"/*.json "$RESULTS"/
log "results in $RESULTS ($( [ $status = 0 ] && echo all ok || echo 'some job failed: see its JSON'))"
exit $status
