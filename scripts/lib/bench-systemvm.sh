#!/usr/bin/env bash
# The system VM under QEMU/TCG: image size, boot to the first DHCP ACK, and iperf3 from a guest
# to the outside through it, beside a plain Linux router VM built the same way (the same kernel
# and busybox initramfs, with kernel forwarding and an nft masquerade instead of vrouter), in
# one run.
#   host:     namespace vb<pid>-h with bridges bweb and bpub; each VM has a NIC on each.
#   guest:    vb<pid>-g on bweb (DHCP from vrouter; 10.1.1.100/24 by hand for the Linux VM).
#   outside:  vb<pid>-o on bpub, 203.0.113.1/24, 198.51.100.5 on lo (the iperf3 server).
#   vrouter:  scripts/systemvm.sh's image, config by fw_cfg (web 10.1.1.0/24 untagged on the
#             first NIC, public 203.0.113.10 on the second, source NAT).
#   Linux:    the same kernel; initrd = the system VM's busybox and modules plus nft (and its
#             libraries) and the nf_tables NAT modules; /init sets the addresses, ip_forward=1
#             and `masquerade` on the public NIC.
# Prints the image size, QEMU start -> first ACK (ROUNDS boots, median), and iperf3 TCP single
# stream guest -> outside (DURATION s per VM per round, medians) with vrouter/Linux.
# Both VMs run under TCG here (/dev/kvm exists but guest kernels die on it), so absolute
# figures are TCG's; the ratio is what compares. Called by scripts/bench.sh (NO_SYSTEMVM=1
# skips it); also on its own as root:  DURATION=5 ROUNDS=1 bash scripts/lib/bench-systemvm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "scripts/lib/bench-systemvm.sh needs root" >&2; exit 1; }
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
source scripts/lib/bench-common.sh
source scripts/lib/guest-image.sh

id=$$
work=$(mktemp -d /tmp/vrouter-bench-systemvm.XXXXXX)
nsh=vb$id-h nsg=vb$id-g nso=vb$id-o
qpid=""
cleanup() {
    set +e
    [ -n "$qpid" ] && kill "$qpid" 2>/dev/null && wait "$qpid" 2>/dev/null
    del_namespaces "$nsg" "$nso" "$nsh"
    rm -rf "$work"
}
trap cleanup EXIT
WEB_MAC=52:54:00:5a:00:01 PUB_MAC=52:54:00:5a:00:09

# ---- images ----
bash scripts/systemvm.sh build "$work/img" --state-disk --pvh ${VR:+--binary "$VR"} | grep 'MB in all'
kernel=$work/img/kernel
# The Linux router: the same busybox root and modules, plus nft and the NAT modules.
lr=$work/lr
mkdir -p "$lr/root"
(cd "$lr/root" && gzip -dc "$work/img/initrd" | cpio -id --quiet)
rm -f "$lr/root/usr/bin/vrouter"
kpkg=$(_vrg_kernel_pkg)
_vrg_fetch_unpack "$lr" "$kpkg"
_vrg_stage_modules "$lr/x/lib/modules/${kpkg#linux-image-}" "$lr/root/lib/modules" nft_chain_nat nft_masq nf_tables >>"$lr/root/etc/systemvm/modules"
nft=$(command -v nft)
cp -L "$nft" "$lr/root/usr/sbin/nft"
for lib in $(ldd "$nft" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$lr/root$(dirname "$lib")"; cp -L "$lib" "$lr/root$lib"
done
cat >"$lr/root/init" <<'INIT'
#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
while read -r m; do insmod "/lib/modules/$m.ko" 2>/dev/null; done </etc/systemvm/modules
ip link set lo up
for n in /sys/class/net/*; do
    case "$(cat "$n/address")" in
        52:54:00:5a:00:01) ip addr add 10.1.1.1/24 dev "${n##*/}" ;;
        52:54:00:5a:00:09) ip addr add 203.0.113.10/24 dev "${n##*/}"; pub=${n##*/} ;;
    esac
    ip link set "${n##*/}" up
done
ip route add default via 203.0.113.1
echo 1 >/proc/sys/net/ipv4/ip_forward
nft add table ip nat && nft add chain ip nat post '{ type nat hook postrouting priority 100; }' &&
    nft add rule ip nat post oifname "$pub" masquerade && echo "linux-router: up"
while :; do sleep 3600; done
INIT
chmod 755 "$lr/root/init"
(cd "$lr/root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) | gzip -9n >"$work/lr-initrd"

cat >"$work/acct.toml" <<TOML
[router]
name = "bench"
busy_poll_us = ${BUSY_POLL_US:-0}
[[network]]
name = "web"
cidr = "10.1.1.0/24"
gateway = "10.1.1.1"
dhcp_range = ["10.1.1.100", "10.1.1.150"]
[[uplink]]
name = "web0"
kind = "netdev"
match_mac = "$WEB_MAC"
untagged = "web"
[public]
kind = "netdev"
match_mac = "$PUB_MAC"
ips = ["203.0.113.10/24"]
gateway = "203.0.113.1"
TOML

# ---- the host, the guest, the outside ----
ip netns add "$nsh"
ip netns exec "$nsh" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
for br in bweb bpub; do ip -n "$nsh" link add "$br" type bridge; ip -n "$nsh" link set "$br" up; done
for ns in "$nsg" "$nso"; do
    ip netns add "$ns"; ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip -n "$ns" link set lo up
done
ip -n "$nsh" link add hg type veth peer name eth0 netns "$nsg"; ip -n "$nsh" link set hg master bweb up
ip -n "$nsh" link add ho type veth peer name eth0 netns "$nso"; ip -n "$nsh" link set ho master bpub up
ip -n "$nsg" link set eth0 address 52:54:00:5b:01:64 up
ip -n "$nso" addr add 203.0.113.1/24 dev eth0; ip -n "$nso" link set eth0 up
ip -n "$nso" addr add 198.51.100.5/32 dev lo
ip netns exec "$nso" iperf3 -s -D -B 198.51.100.5 --logfile "$work/iperf-s.log"

boot() { # initrd [fw_cfg] -> starts the VM in the host namespace (qpid), NICs on the bridges
    local fw=()
    [ -n "${2:-}" ] && fw=(-fw_cfg "name=opt/vrouter/config,file=$2" -drive "file=$work/img/state.img,if=virtio,format=raw")
    ip netns exec "$nsh" qemu-system-x86_64 -machine q35 -accel tcg -cpu qemu64 -smp 1 -m 256 -nodefaults \
        -display none -no-reboot -serial "file:$work/console.log" \
        -kernel "$kernel" -initrd "$1" -append console=ttyS0 "${fw[@]}" \
        -netdev "tap,id=w,ifname=vb$id-w,script=no,downscript=no" -device "virtio-net-pci,netdev=w,mac=$WEB_MAC,romfile=" \
        -netdev "tap,id=p,ifname=vb$id-p,script=no,downscript=no" -device "virtio-net-pci,netdev=p,mac=$PUB_MAC,romfile=" \
        </dev/null >"$work/qemu.out" 2>&1 &
    qpid=$!
    for _ in $(seq 100); do ip -n "$nsh" link show "vb$id-p" >/dev/null 2>&1 && break; sleep 0.1; done
    ip -n "$nsh" link set "vb$id-w" master bweb up
    ip -n "$nsh" link set "vb$id-p" master bpub up
}
halt() { kill "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null; qpid=""; }
iperf_mbps() {
    ip netns exec "$nsg" iperf3 -c 198.51.100.5 -t "$DURATION" -J 2>/dev/null |
        python3 -c 'import json,sys; print("%.0f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))' 2>/dev/null || true
}

acks=() acks_pvh=() vr=() kr=()
first_ack() { # -> seconds from QEMU start to the guest's first ACK (appended to the named array)
    local -n into=$1
    ip -n "$nsg" addr flush dev eth0
    t0=$(date +%s.%N)
    boot "$work/img/initrd" "$work/acct.toml"
    if ip netns exec "$nsg" busybox udhcpc -i eth0 -f -q -n -t 60 -T 1 -s /bin/true >/dev/null 2>&1; then
        into+=("$(python3 -c "import time; print('%.2f' % (time.time() - $t0))")")
        return 0
    fi
    echo "bench-systemvm: no DHCP answer from the system VM" >&2; tail -20 "$work/console.log" >&2
    return 1
}
for r in $(seq "$ROUNDS"); do
    # The same image booted from the decompressed kernel (PVH), for the boot time alone.
    kernel=$work/img/vmlinux
    first_ack acks_pvh || true
    halt
    kernel=$work/img/kernel
    # vrouter: boot to the first ACK, then the transfer.
    if first_ack acks; then
        ip -n "$nsg" addr add 10.1.1.100/24 dev eth0 2>/dev/null || true
        ip -n "$nsg" route replace default via 10.1.1.1
        must_ping "$nsg" 198.51.100.5 "system VM" "$work/console.log" && x=$(iperf_mbps) && [ -n "$x" ] && vr+=("$x")
    fi
    halt
    # The Linux router VM.
    ip -n "$nsg" addr flush dev eth0
    ip -n "$nsg" addr add 10.1.1.100/24 dev eth0
    ip -n "$nsg" route replace default via 10.1.1.1
    boot "$work/lr-initrd"
    for _ in $(seq 60); do ip netns exec "$nsg" ping -c 1 -W 1 198.51.100.5 >/dev/null 2>&1 && break; done
    x=$(iperf_mbps); [ -n "$x" ] && kr+=("$x")
    halt
done
v=$(median "${vr[@]}") k=$(median "${kr[@]}")
echo
echo "== System VM under QEMU/TCG (median of $ROUNDS) =="
printf "%-44s %8s s\n" "QEMU start -> first DHCP ACK (vrouter VM)" "$(median "${acks[@]}")"
printf "%-44s %8s s\n" "  the same, kernel booted by PVH (--pvh)" "$(median "${acks_pvh[@]}")"
printf "%-44s %8s Mbit/s\n" "iperf3 guest -> outside, vrouter system VM" "$v"
printf "%-44s %8s Mbit/s\n" "iperf3 guest -> outside, Linux router VM" "$k"
printf "%-44s %8s\n" "vrouter / Linux (same kernel, same TCG)" "$(ratio "$v" "$k")"
