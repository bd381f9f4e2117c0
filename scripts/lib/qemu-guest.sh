#!/usr/bin/env bash
# scripts/lib/qemu-guest.sh -- start/stop tiny QEMU (TCG) test guests whose
# only NIC is a tap that QEMU creates, for vrouter integration tests.
#
#   source scripts/lib/qemu-guest.sh
#   qemu_guest_start vm1 vrtap1 52:54:00:00:01:01 ./guest-test.sh /tmp/vm1.log
#   pid=$QEMU_GUEST_PID              # also: qemu_guest_pid vm1
#   ... attach vrtap1 to vrouter (AF_PACKET) ...
#   qemu_guest_wait_marker /tmp/vm1.log VRGUEST_DONE 120 "$pid" || fail
#   rc=$(qemu_guest_result /tmp/vm1.log)  # test.sh's exit code, or empty
#   qemu_guest_wait_exit "$pid" 30 || qemu_guest_stop "$pid"
#
# Sourcing defines functions only and does not change the caller's shell
# options. Nothing here puts addresses or routes on any host interface.
#
# Functions
#   qemu_guest_start NAME TAPNAME MAC SCRIPTFILE LOGFILE
#       Builds the cached guest image if needed (scripts/lib/guest-image.sh),
#       makes a per-guest initrd = cached initramfs + SCRIPTFILE as /test.sh,
#       starts qemu-system-x86_64 in the background (serial console -> LOGFILE,
#       truncated first) and returns once TAPNAME exists, is up, and has IPv6
#       disabled (so the host kernel sends nothing on it by itself).
#       Sets QEMU_GUEST_PID; writes the pid to LOGFILE.pid. Returns non-zero
#       (and kills what it started) if QEMU dies or the tap never shows up.
#       Optional environment:
#         QEMU_GUEST_NETNS=NS     run QEMU via 'ip netns exec NS' so the tap is
#                                 created inside NS (default: current netns).
#         QEMU_GUEST_APPEND="..." extra kernel cmdline words; NAME=value words
#                                 become env vars of /init and /test.sh, e.g.
#                                 "VRGUEST_IPV6=1" or
#                                 "VRGUEST_VIRTIO_NET_OPTS=csum=0,gso=0"
#                                 (module options for virtio_net, commas
#                                 become spaces) or
#                                 "MYTEST_IP=10.0.0.2".
#         QEMU_GUEST_NETDEV_OPTS=",vnet_hdr=off"  appended to -netdev tap,...
#                                 Default is QEMU's: the tap is opened with
#                                 IFF_VNET_HDR (12-byte header) and the guest
#                                 negotiates csum/TSO offload, so a plain
#                                 AF_PACKET socket on the tap sees guest TCP as
#                                 GSO super-frames (observed up to ~13 KB) with
#                                 CHECKSUM_PARTIAL, i.e. wrong TCP checksums on
#                                 the wire view. ",vnet_hdr=off" (or
#                                 QEMU_GUEST_APPEND=VRGUEST_VIRTIO_NET_OPTS=csum=0,gso=0
#                                 for the guest's TX side only) gives plain
#                                 <=1514-byte frames with correct checksums.
#         QEMU_GUEST_EXTRA_FILES="HOST=GUEST ..." extra files in the test cpio.
#         QEMU_GUEST_MEM=256      guest RAM in MiB.
#         QEMU_GUEST_KERNEL=PATH  kernel to boot (default: cached vmlinux if
#                                 present, else vmlinuz).
#         QEMU_GUEST_TAP_UP=1     0 leaves the tap down and IPv6 untouched.
#   qemu_guest_wait_marker LOG MARKER TIMEOUT [PID]
#       Wait until a line of LOG contains MARKER (fixed string). 0 = found,
#       1 = timeout or (if PID given) QEMU exited without printing it.
#   qemu_guest_wait_exit PID TIMEOUT      0 once PID has exited.
#   qemu_guest_result LOG                 print N from "VRGUEST_DONE rc=N".
#   qemu_guest_stop PID                   SIGTERM, then SIGKILL after 5 s, to
#                                         that one pid; removes its temp initrd.
#   qemu_guest_pid NAME                   print the pid of guest NAME.
#
# Markers printed by the guest's /init (see guest-image.sh):
#   "VRGUEST_READY uptime=S"   lo/eth0 up, /test.sh about to run
#   "VRGUEST_DONE rc=N ..."    test.sh finished; the VM powers off next
#
# Inside the guest (busybox 1.35, no iproute2, no ethtool), a VLAN
# sub-interface is made with:
#   ip link add link eth0 name eth0.101 type vlan id 101 && ip link set eth0.101 up
# (or '. /lib/vrguest.sh; vrg_vlan_add eth0 101').

_QG_LIBDIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib/guest-image.sh
source "$_QG_LIBDIR/guest-image.sh"

declare -gA QEMU_GUEST_PIDS=()      # NAME -> pid
declare -gA _QG_WORKDIR=()          # pid -> temp dir holding the initrd
# shellcheck disable=SC2034 # read by the sourcing test script
QEMU_GUEST_PID=""                   # pid of the last guest started

_qg_err() { printf 'qemu-guest: %s\n' "$*" >&2; }

# Run a command in the guest's netns (or the current one).
_qg_in_ns() {
    if [ -n "${QEMU_GUEST_NETNS:-}" ]; then ip netns exec "$QEMU_GUEST_NETNS" "$@"; else "$@"; fi
}

# True while PID exists and is not a zombie.
_qg_alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [ "${st%% *}" != Z ]
}

qemu_guest_pid() { printf '%s\n' "${QEMU_GUEST_PIDS[$1]:-}"; }

qemu_guest_start() {
    if [ $# -ne 5 ]; then
        _qg_err "usage: qemu_guest_start NAME TAPNAME MAC SCRIPTFILE LOGFILE"; return 2
    fi
    local name=$1 tap=$2 mac=$3 script=$4 log=$5
    local work pid i
    QEMU_GUEST_PID=""
    if [ ${#tap} -gt 15 ]; then _qg_err "tap name too long: $tap"; return 2; fi
    if _qg_in_ns ip link show dev "$tap" >/dev/null 2>&1; then
        _qg_err "interface $tap already exists${QEMU_GUEST_NETNS:+ in netns $QEMU_GUEST_NETNS}"
        return 1
    fi
    work=$(mktemp -d "/tmp/vrouter-guest-$name.XXXXXX") || return 1
    # shellcheck disable=SC2086 # QEMU_GUEST_EXTRA_FILES is a word list
    if ! guest_initrd_with_script "$script" "$work/initrd" ${QEMU_GUEST_EXTRA_FILES:-}; then
        rm -rf "$work"; return 1
    fi
    : >"$log"
    # Prefer the decompressed ELF kernel (PVH boot: no in-guest xz unpacking,
    # ~2.5 s instead of ~6.5 s to /init under TCG on this host).
    local kernel=${QEMU_GUEST_KERNEL:-$VR_GUEST_KERNEL}
    [ -z "${QEMU_GUEST_KERNEL:-}" ] && [ -s "$VR_GUEST_VMLINUX" ] && kernel=$VR_GUEST_VMLINUX
    # Kernel cmdline: console on the first serial port; 'quiet' keeps the log
    # to a few lines (our /init writes straight to /dev/console, so its lines
    # are always there); panic=-1 + -no-reboot make any panic end QEMU.
    # cryptomgr.notests/tsc=reliable/no_timer_check only shave boot time.
    local append="console=ttyS0 quiet panic=-1 cryptomgr.notests tsc=reliable no_timer_check"
    append+=" ${QEMU_GUEST_APPEND:-}"
    # -nodefaults: no VGA/default NIC/etc.; romfile= skips the virtio PXE ROM.
    # -cpu qemu64 (the TCG default) boots measurably faster than -cpu max.
    local cmd=(qemu-system-x86_64
        -name "vrguest-$name"
        -machine q35 -accel tcg -cpu qemu64 -smp 1 -m "${QEMU_GUEST_MEM:-256}"
        -nodefaults -display none -monitor none -no-reboot
        -serial "file:$log"
        -kernel "$kernel" -initrd "$work/initrd" -append "$append"
        -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no${QEMU_GUEST_NETDEV_OPTS:-}"
        -device "virtio-net-pci,netdev=n0,mac=$mac,romfile=")
    [ -n "${QEMU_GUEST_NETNS:-}" ] && cmd=(ip netns exec "$QEMU_GUEST_NETNS" "${cmd[@]}")
    # A plain command (not a shell function) in the background: bash forks
    # and execs it directly, and 'ip netns exec' execs QEMU in turn, so $! is
    # QEMU's own pid, which is what qemu_guest_stop must signal.
    "${cmd[@]}" </dev/null >>"$work/qemu.out" 2>&1 &
    pid=$!
    _QG_WORKDIR[$pid]=$work
    # Wait for QEMU to create the tap (it does so before the guest runs).
    for ((i = 0; i < 100; i++)); do
        if ! _qg_alive "$pid"; then
            _qg_err "QEMU for $name exited early:"; cat "$work/qemu.out" >&2
            wait "$pid" 2>/dev/null; rm -rf "$work"; unset "_QG_WORKDIR[$pid]"; return 1
        fi
        _qg_in_ns ip link show dev "$tap" >/dev/null 2>&1 && break
        sleep 0.1
    done
    if ! _qg_in_ns ip link show dev "$tap" >/dev/null 2>&1; then
        _qg_err "tap $tap did not appear"; qemu_guest_stop "$pid"; return 1
    fi
    if [ "${QEMU_GUEST_TAP_UP:-1}" = 1 ]; then
        # No IPv6 link-local/RS/MLD from the host kernel on this port; then up.
        _qg_in_ns sh -c "echo 1 >/proc/sys/net/ipv6/conf/$tap/disable_ipv6" 2>/dev/null || true
        _qg_in_ns ip link set dev "$tap" up || { qemu_guest_stop "$pid"; return 1; }
    fi
    echo "$pid" >"$log.pid"
    QEMU_GUEST_PIDS[$name]=$pid
    # shellcheck disable=SC2034 # read by the sourcing test script
    QEMU_GUEST_PID=$pid
    return 0
}

qemu_guest_wait_marker() {
    if [ $# -lt 3 ]; then _qg_err "usage: qemu_guest_wait_marker LOG MARKER TIMEOUT [PID]"; return 2; fi
    local log=$1 marker=$2 timeout=$3 pid=${4:-}
    local deadline=$((SECONDS + timeout))
    while :; do
        grep -qF -- "$marker" "$log" 2>/dev/null && return 0
        if [ -n "$pid" ] && ! _qg_alive "$pid"; then
            grep -qF -- "$marker" "$log" 2>/dev/null && return 0
            return 1
        fi
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.2
    done
}

qemu_guest_wait_exit() {
    local pid=$1 timeout=${2:-30}
    local deadline=$((SECONDS + timeout))
    while _qg_alive "$pid"; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.2
    done
    wait "$pid" 2>/dev/null || true     # reap if it is our child
    _qg_cleanup_pid "$pid"
    return 0
}

qemu_guest_result() {
    sed -n 's/.*VRGUEST_DONE rc=\([0-9]*\).*/\1/p' "$1" 2>/dev/null | tail -n 1
}

_qg_cleanup_pid() {
    local pid=$1 n
    if [ -n "${_QG_WORKDIR[$pid]:-}" ]; then rm -rf "${_QG_WORKDIR[$pid]}"; unset "_QG_WORKDIR[$pid]"; fi
    for n in "${!QEMU_GUEST_PIDS[@]}"; do
        [ "${QEMU_GUEST_PIDS[$n]}" = "$pid" ] && unset "QEMU_GUEST_PIDS[$n]"
    done
    return 0
}

qemu_guest_stop() {
    local pid=$1 i
    [ -n "$pid" ] || return 0
    if _qg_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 25; i++)); do _qg_alive "$pid" || break; sleep 0.2; done
        if _qg_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    wait "$pid" 2>/dev/null || true
    _qg_cleanup_pid "$pid"
}
