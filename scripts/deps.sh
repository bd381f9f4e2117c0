#!/usr/bin/env bash
# Installs what vrouter's build, tests, demo and benchmark need on a fresh Debian machine:
# Debian packages (only the missing ones) and the Rust toolchain check. Idempotent.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need+=(iproute2)
have ping || need+=(iputils-ping)
have iperf3 || need+=(iperf3)
have tcpdump || need+=(tcpdump)
have python3 || need+=(python3)
have qemu-system-x86_64 || need+=(qemu-system-x86)
have cpio || need+=(cpio)      # the QEMU guest's initramfs (scripts/lib/guest-image.sh)
have socat || need+=(socat)    # L3 tests and the demo: TCP/UDP peers behind NAT and forwards
have traceroute || need+=(traceroute)   # TTL / ICMP time-exceeded checks through the router
have nft || need+=(nftables)   # the kernel NAT baseline in scripts/bench.sh (masquerade)
have busybox || need+=(busybox)         # udhcpc, a DHCP client in guest namespaces
have dhclient || need+=(isc-dhcp-client) # ISC dhclient, the other DHCP client
have dig || need+=(bind9-dnsutils)      # dig against the router's DNS
have dnsmasq || need+=(dnsmasq-base)    # the DHCP/DNS baseline in scripts/bench.sh
have dnsperf || need+=(dnsperf)         # DNS queries per second in scripts/bench.sh
have haproxy || need+=(haproxy)         # the load-balancer baseline in scripts/lib/bench-lb.sh (the CloudStack VR's LB)
have wrk || need+=(wrk)                 # HTTP connections per second in scripts/lib/bench-lb.sh
have nginx || need+=(nginx)             # the LB benchmark's backends (one worker each; busybox httpd forks per connection)
have prometheus || need+=(prometheus)   # a real Prometheus scrapes the metrics endpoint in tests/observe.rs
have tmux || need+=(tmux)               # drives `ctl top` in a terminal in tests
have systemd-analyze || need+=(systemd) # `systemd-analyze verify` on conf/vrouter@.service
have cloud-init || need+=(cloud-init)   # its datasource code asks vrouter for metadata in tests/metadata.rs
have mkfs.ext4 || need+=(e2fsprogs)     # the system VM's state disk (scripts/systemvm.sh)
have strip || need+=(binutils)          # the system VM's vrouter without its debug info
have wireguard-go || need+=(wireguard-go)   # the VPN tests' branch and road-warrior peers (userspace WireGuard)
have wg || need+=(wireguard-tools)          # `wg` configures them
have vtysh || need+=(frr)                   # BGP EVPN tests and benchmark: FRR route reflector and kernel VTEP
if [ ${#need[@]} -gt 0 ]; then
    echo "deps: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! have cargo; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "deps: no Rust toolchain (cargo) found; install rustup's stable toolchain" >&2
        exit 1
    fi
fi
[ -e /dev/net/tun ] || { echo "deps: /dev/net/tun is missing" >&2; exit 1; }
