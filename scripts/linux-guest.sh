#!/usr/bin/env bash
# The Linux guest kit: Debian 12's cloud kernel and an initramfs built from Debian packages.
#
#   scripts/linux-guest.sh            build (or reuse) the kit; prints its directory
#
# Output, cached between runs in ${NIGHTSHIFT_CACHE:-~/.cache/nightshift}/linux-guest/<kernel>/:
#   bzImage      the kernel as Debian ships it (Linux x86 boot protocol)
#   vmlinux      the ELF inside it (PVH entry note), extracted like scripts/extract-vmlinux
#   initrd.img   busybox-static + the kernel's own virtio modules; its /init loads them,
#                mounts the first virtio disk on /mnt (if it holds a filesystem), runs the
#                command given after `--` on the kernel command line, prints
#                `nightshift-kit: status N` and powers off.
#   version      the kernel release
#
# Why from Debian packages: the kernel is a real client nobody here wrote (modular virtio,
# no virtio_mmio command-line devices: it finds devices only through ACPI).
set -euo pipefail

log() { printf 'linux-guest: %s\n' "$*" >&2; }

CACHE=${NIGHTSHIFT_CACHE:-$HOME/.cache/nightshift}/linux-guest
mkdir -p "$CACHE"
# One run at a time: the Linux tests call this in parallel, and two apt-get runs at once
# fail on apt's lock. The others wait here, then find the kit in the cache.
exec 9>"$CACHE/.lock"
flock 9

need_tools() {
  local missing=()
  command -v dpkg-deb >/dev/null || missing+=(dpkg)
  command -v cpio >/dev/null || missing+=(cpio)
  command -v xz >/dev/null || missing+=(xz-utils)
  command -v zstd >/dev/null || missing+=(zstd)
  command -v lz4 >/dev/null || missing+=(lz4)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# apt-get download, refreshing the package lists once if the package is unknown.
download() {
  local pkg=$1
  if ! apt-get download -qq "$pkg" 2>/dev/null; then
    log "apt-get update (to find $pkg)"
    apt-get update -qq
    apt-get download -qq "$pkg"
  fi
}

# The cloud kernel package the metapackage points at, e.g. linux-image-6.1.0-48-cloud-amd64.
kernel_package() {
  local dep
  dep=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  if [ -z "$dep" ]; then
    apt-get update -qq
    dep=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  fi
  [ -n "$dep" ] || { log "cannot find Debian's cloud kernel package"; exit 1; }
  echo "$dep"
}

# Like the kernel's scripts/extract-vmlinux, but the boot protocol header says where the
# compressed payload is (setup_sects, payload_offset, payload_length): decompress it with
# whichever tool its magic names and keep it if it is an ELF.
le32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
extract_vmlinux() {
  local img=$1 out=$2 tmp=$3 setup_sects start len magic cmd
  setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$img" | tr -d ' ')
  start=$(( (setup_sects + 1) * 512 + $(le32 "$img" $((0x248))) ))
  len=$(le32 "$img" $((0x24c)))
  magic=$(od -An -tx1 -j "$start" -N6 "$img" | tr -d ' \n')
  case $magic in
    fd377a585a00*) cmd="xz -dc" ;;
    28b52ffd*) cmd="zstd -dcq" ;;
    02214c18*) cmd="lz4 -dcq" ;;
    1f8b*) cmd="gzip -dc" ;;
    425a68*) cmd="bzip2 -dc" ;;
    5d0000*) cmd="xz -dc --format=lzma" ;;
    *) log "unknown kernel compression (magic $magic)"; return 1 ;;
  esac
  tail -c +$((start + 1)) "$img" | head -c "$len" | $cmd > "$tmp" 2>/dev/null || true
  [ "$(head -c 4 "$tmp" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] || return 1
  mv "$tmp" "$out"
}

# The module file for `name` (dashes and underscores are the same to the kernel).
module_path() {
  find "$1" -name "$2.ko*" -o -name "${2//_/-}.ko*" | head -1
}

# Modules named on the command line plus what their `depends=` (.modinfo) names,
# dependencies first, as paths; built-in ones are skipped. The package has no
# modules.dep (depmod writes it on install), so read the modules themselves.
module_order() {
  local moddir=$1; shift
  local -A seen=()
  local order=()
  visit() {
    local name=$1 path deps d
    [ -z "${seen[$name]:-}" ] || return 0
    seen[$name]=1
    if grep -Eq "/${name//_/[-_]}\.ko" "$moddir/modules.builtin" 2>/dev/null; then
      return 0
    fi
    path=$(module_path "$moddir/kernel" "$name")
    [ -n "$path" ] || { log "module $name not found"; exit 1; }
    deps=$(modinfo_field "$path" depends)
    for d in ${deps//,/ }; do visit "${d//-/_}"; done
    order+=("$path")
  }
  for m in "$@"; do visit "$m"; done
  printf '%s\n' "${order[@]}"
}

modinfo_field() {
  local data
  case $1 in
    *.xz) data=$(xz -dc "$1" | tr '\0' '\n') ;;
    *.zst) data=$(zstd -dcq "$1" | tr '\0' '\n') ;;
    *) data=$(tr '\0' '\n' < "$1") ;;
  esac
  printf '%s\n' "$data" | sed -n "s/^$2=//p" | head -1
}

write_init() {
  cat > "$1" <<'EOF'
#!/bin/sh
# nightshift Linux guest kit init: load the virtio modules, mount the first virtio
# disk, run the command after `--` on the kernel command line, report, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do
  insmod "/lib/modules/$m" && echo "nightshift-kit: loaded ${m##*/}" || echo "nightshift-kit: FAILED to load $m"
done
# Devices appear asynchronously once virtio_mmio has probed.
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ -b /dev/vda ]; then
  echo "nightshift-kit: disk /dev/vda $(cat /sys/block/vda/size) sectors"
  mkdir -p /mnt
  mount /dev/vda /mnt 2>/dev/null && echo "nightshift-kit: mounted /dev/vda on /mnt"
else
  echo "nightshift-kit: no virtio disk"
fi
if [ $# -gt 0 ]; then
  echo "nightshift-kit: running: $*"
  sh -c "$*"
  status=$?
else
  echo "nightshift-kit: no command after -- on the kernel command line; starting a shell"
  setsid cttyhack sh
  status=$?
fi
echo "nightshift-kit: status $status"
sync
umount /mnt 2>/dev/null
poweroff -f
EOF
  chmod 755 "$1"
}

build() {
  need_tools
  local pkg ver dir
  pkg=$(kernel_package)
  ver=${pkg#linux-image-}
  dir=$CACHE/$ver
  if [ -s "$dir/bzImage" ] && [ -s "$dir/initrd.img" ] && [ -e "$dir/.done" ]; then
    echo "$dir"
    return
  fi
  work=$(mktemp -d "$CACHE/.build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "fetching $pkg and busybox-static"
  (cd "$work" && download "$pkg" && download busybox-static)
  dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
  dpkg-deb -x "$work"/busybox-static_*.deb "$work/busybox"
  mkdir -p "$dir"
  cp "$work/kernel/boot/vmlinuz-$ver" "$dir/bzImage"
  if extract_vmlinux "$dir/bzImage" "$dir/vmlinux" "$work/vmlinux.tmp"; then
    log "extracted vmlinux (PVH entry)"
  else
    log "could not extract vmlinux from the bzImage; the PVH path is unavailable"
  fi

  local root=$work/initramfs moddir=$work/kernel/lib/modules/$ver m
  mkdir -p "$root"/{bin,dev,proc,sys,mnt,lib/modules}
  cp "$work/busybox/bin/busybox" "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  : > "$root/lib/modules/order"
  for m in $(module_order "$moddir" virtio virtio_ring virtio_mmio virtio_blk virtio_net virtio_rng); do
    local name=${m##*/}
    case $name in
      *.ko.xz) xz -dc "$m" > "$root/lib/modules/${name%.xz}"; name=${name%.xz} ;;
      *.ko.zst) zstd -dcq "$m" > "$root/lib/modules/${name%.zst}"; name=${name%.zst} ;;
      *) cp "$m" "$root/lib/modules/$name" ;;
    esac
    echo "$name" >> "$root/lib/modules/order"
  done
  log "modules: $(tr '\n' ' ' < "$root/lib/modules/order")"
  write_init "$root/init"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) | gzip -9 > "$dir/initrd.img"
  echo "$ver" > "$dir/version"
  touch "$dir/.done"
  echo "$dir"
}

build
