#!/usr/bin/env bash
# vrouter as an account's system VM: builds a bootable kernel + initrd from Debian packages.
#
#   scripts/systemvm.sh build DIR [--state-disk] [--pvh] [--binary PATH]
#
# Writes DIR/kernel (Debian's linux-image-*-amd64 as shipped) and DIR/initrd (busybox-static, the
# modules the VM needs, the vrouter binary and the libraries it links, and an /init), bootable
# with
#   qemu-system-x86_64 -kernel DIR/kernel -initrd DIR/initrd -append console=ttyS0 \
#     -fw_cfg name=opt/vrouter/config,file=acct.toml \
#     -device virtio-serial -chardev socket,id=ctl,path=/run/vrouter/acct-42.sock,server=on,wait=off \
#     -device virtserialport,chardev=ctl,name=org.vrouter.ctl \
#     -drive file=DIR/state.img,if=virtio,format=raw \
#     -netdev tap,id=n0,ifname=...,script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=...
# --state-disk also writes DIR/state.img (64 MiB ext4, label vrouter-state) unless one is there
# already (it holds the leases and the last applied config: never overwritten; delete it to
# start afresh). --binary takes that vrouter binary instead of building target/release/vrouter.
# --pvh also writes DIR/vmlinux, the same kernel decompressed (an ELF QEMU boots by PVH): 66 MB
# instead of 8, for hosts that run the VM under TCG, where decompressing the bzImage takes ~4 s
# of the boot (under KVM it takes milliseconds).
#
# At boot (/init): modules loaded in dependency order; the state disk (the first virtio disk,
# /dev/vda) mounted at /var/lib/vrouter; the config is /var/lib/vrouter/vrouter.toml: copied
# from fw_cfg (opt/vrouter/config) on first boot and whenever the host gives a different one,
# otherwise the one last applied with `ctl apply` (written there) stays; every NIC up (the
# config names them by match_mac); vrouter runs with the control protocol on the virtio-serial
# port org.vrouter.ctl as well as its socket, its log on the serial console, restarted if it
# exits; the ACPI power button (virsh shutdown, QEMU's system_powerdown) stops vrouter, syncs,
# unmounts and powers off. The kernel command line needs nothing but console=ttyS0.
#
# Reproducible: the same inputs (Debian packages, vrouter binary) give the same bytes: files
# sorted, owners 0:0, every mtime SOURCE_DATE_EPOCH (default: the last commit's time), gzip -n;
# the state disk's UUID, hash seed and times are fixed too (E2FSPROGS_FAKE_TIME).
# Needs: apt-get (Debian's archive), dpkg, cpio, gzip, strip, ldd; mkfs.ext4 for --state-disk;
# cargo unless --binary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/guest-image.sh

usage() { echo "usage: $0 build DIR [--state-disk] [--pvh] [--binary PATH]" >&2; exit 2; }
[ $# -ge 2 ] && [ "$1" = build ] || usage
dir=$2; shift 2
state_disk=0 pvh=0 binary=""
while [ $# -gt 0 ]; do
    case "$1" in
        --state-disk) state_disk=1 ;;
        --pvh) pvh=1 ;;
        --binary) binary=${2:?--binary needs a path}; shift ;;
        *) usage ;;
    esac
    shift
done

# The modules the system VM loads (their dependencies come along): virtio NICs, the
# virtio-serial control port, the state disk (ext4 wants crc32c at mount), QEMU's fw_cfg in
# sysfs, and the ACPI power button with the event device busybox acpid reads.
MODULES="virtio_pci virtio_net virtio_console virtio_blk ext4 crc32c_generic qemu_fw_cfg button evdev"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

if [ -z "$binary" ]; then
    source scripts/deps.sh >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
    cargo build --release --locked -q
    binary=target/release/vrouter
fi
[ -x "$binary" ] || { echo "systemvm: no vrouter binary at $binary" >&2; exit 1; }
_vrg_ensure_tools
command -v strip >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils >/dev/null; }

mkdir -p "$dir"
tmp=$(mktemp -d /tmp/vrouter-systemvm.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
kpkg=$(_vrg_kernel_pkg)
kver=${kpkg#linux-image-}
_vrg_fetch_unpack "$tmp" "$kpkg" busybox-static
kmod="$tmp/x/lib/modules/$kver"
root="$tmp/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc/systemvm,etc/acpi/PWRF,lib/modules,var/lib/vrouter}
cp "$tmp/x/bin/busybox" "$root/bin/busybox"
while read -r applet; do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done < <("$root/bin/busybox" --list-full)
_vrg_stage_modules "$kmod" "$root/lib/modules" $MODULES >"$root/etc/systemvm/modules"

# vrouter, without its debug info, and what it links (from the machine's Debian libc6 and
# libgcc-s1, the ones it was built against).
strip -o "$root/usr/bin/vrouter" "$binary"
for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

cat >"$root/init" <<'INIT'
#!/bin/sh
# /init of vrouter's system VM (scripts/systemvm.sh).
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/virtio-ports
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=755 tmpfs /run
exec </dev/console >/dev/console 2>&1
say() { echo "systemvm: $*"; }
say "booting (kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s)"
while read -r m; do
    insmod "/lib/modules/$m.ko" 2>/dev/null || say "module $m did not load"
done </etc/systemvm/modules
echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null
echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6 2>/dev/null
ip link set lo up
# What udev would do: virtio-serial ports by name.
for p in /sys/class/virtio-ports/*; do
    [ -r "$p/name" ] && ln -sf "/dev/${p##*/}" "/dev/virtio-ports/$(cat "$p/name")"
done
state=/var/lib/vrouter
if [ -b /dev/vda ] && mount -t ext4 -o noatime /dev/vda "$state"; then
    say "state disk mounted at $state"
else
    mount -t tmpfs tmpfs "$state"
    say "no state disk: leases and applied configs last until power-off"
fi
cfg=$state/vrouter.toml
fw=/sys/firmware/qemu_fw_cfg/by_name/opt/vrouter/config/raw
if [ -r "$fw" ]; then
    sum=$(sha256sum <"$fw" | cut -d' ' -f1)
    if [ ! -s "$cfg" ] || [ "$(cat "$state/boot-config.sha256" 2>/dev/null)" != "$sum" ]; then
        cp "$fw" "$cfg.new" && mv "$cfg.new" "$cfg" && echo "$sum" >"$state/boot-config.sha256"
        say "config from fw_cfg (opt/vrouter/config)"
    else
        say "config: the last applied one (fw_cfg unchanged since it was taken)"
    fi
fi
sync
for n in /sys/class/net/*; do ip link set "${n##*/}" up; done
# ACPI power button -> clean shutdown.
cat >/etc/acpi/PWRF/00000080 <<'DOWN'
#!/bin/sh
echo "systemvm: power button: shutting down" >/dev/console
touch /run/shutdown
[ -s /run/vrouter.pid ] && kill -TERM "$(cat /run/vrouter.pid)" 2>/dev/null
i=0; while [ -s /run/vrouter.pid ] && kill -0 "$(cat /run/vrouter.pid)" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
sync; umount /var/lib/vrouter 2>/dev/null; sync
echo "systemvm: powering off" >/dev/console
poweroff -f
DOWN
chmod 755 /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid
say "up at $(cut -d' ' -f1 /proc/uptime) s; starting vrouter"
while :; do
    if [ ! -s "$cfg" ]; then
        say "no config: give one with -fw_cfg name=opt/vrouter/config,file=FILE"
        sleep 5; continue
    fi
    NO_COLOR=1 VROUTER_LOG=${VROUTER_LOG:-info} vrouter run -c "$cfg" --control-serial /dev/virtio-ports/org.vrouter.ctl &
    echo $! >/run/vrouter.pid
    wait $!
    rc=$?
    [ -e /run/shutdown ] && { sleep 30; continue; }
    say "vrouter exited ($rc); starting it again in 1 s"
    sleep 1
done
INIT
chmod 755 "$root/init"
# The kernel opens the initial console before /init mounts devtmpfs.
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
mknod -m 666 "$root/dev/null" c 1 3 2>/dev/null || true
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -9n >"$tmp/initrd"
cp "$tmp/x/boot/vmlinuz-$kver" "$tmp/kernel"
mv -f "$tmp/kernel" "$dir/kernel"
if [ "$pvh" = 1 ]; then
    _vrg_extract_vmlinux "$dir/kernel" "$tmp/vmlinux" || { echo "systemvm: cannot decompress the kernel for PVH" >&2; exit 1; }
    mv -f "$tmp/vmlinux" "$dir/vmlinux"
fi
mv -f "$tmp/initrd" "$dir/initrd"
chmod 644 "$dir/kernel" "$dir/initrd"

if [ "$state_disk" = 1 ]; then
    if [ -e "$dir/state.img" ]; then
        echo "systemvm: $dir/state.img exists (leases, applied config): kept"
    else
        truncate -s 64M "$tmp/state.img"
        E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -L vrouter-state -m 0 \
            -U 6d2c1f3e-7a41-4a5b-9c0e-5f7a1b2c3d4e -E hash_seed=0b1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5,root_owner=0:0 \
            "$tmp/state.img"
        mv "$tmp/state.img" "$dir/state.img"
    fi
fi
size() { stat -c %s "$1"; }
total=$(( $(size "$dir/kernel") + $(size "$dir/initrd") ))
printf 'systemvm: %s: kernel %s (%d bytes), initrd %d bytes, %.1f MB in all%s\n' "$dir" "$kpkg" \
    "$(size "$dir/kernel")" "$(size "$dir/initrd")" "$(echo "$total" | awk '{ print $1 / 1e6 }')" \
    "$( [ -e "$dir/state.img" ] && echo ", state.img $(size "$dir/state.img") bytes (sparse)")"
sha256sum "$dir/kernel" "$dir/initrd" | sed 's/^/systemvm: sha256 /'
