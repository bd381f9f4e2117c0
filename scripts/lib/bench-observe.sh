#!/usr/bin/env bash
# What observability costs: forwarding through vrouter with its metrics endpoint scraped every
# second and a capture running on another port, against the same without either, in one run.
#   plain:    vrouter A, guests a1 <-> a2 (taps), no metrics_listen, no capture.
#   observed: vrouter B, guests b1 <-> b2, metrics_listen scraped every second, and
#             `ctl capture b3 -w /dev/null` on a third port (its guest idle).
# Measures iperf3 single-stream TCP (Gbit/s) and 64-byte UDP (packets/s received), medians of
# ROUNDS alternating rounds (default 3) of DURATION s (default 10), and prints the ratios
# (observed / plain; the goal is >= 0.97). Run as root; namespaces vo<pid>-..., removed on exit.
# Numbers go in notes, never in tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/bench-common.sh
need_root "$@"
release_build
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}

id=$$
work=$(mktemp -d /tmp/vrouter-bench-observe.XXXXXX)
all_ns="vo$id-a1 vo$id-a2 vo$id-b1 vo$id-b2 vo$id-b3"
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    del_namespaces $all_ns
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # tag metrics-line ports...
    local tag=$1 metrics=$2; shift 2
    {
        printf '[router]\nname = "bo%s%s"\ncontrol_socket = "%s/%s.sock"\nbusy_poll_us = %s\n%s\n' "$id" "$tag" "$work" "$tag" "${BUSY_POLL_US:-2000}" "$metrics"
        printf '[[network]]\nname = "net"\ncidr = "10.7.0.0/24"\n'
        local i=1 p
        for p in "$@"; do
            printf '[[port]]\nname = "%s"\nnetwork = "net"\nkind = "tap"\nifname = "vo%s-%s"\nmac = "52:54:00:97:0%s:0%s"\nip = "10.7.0.%s"\n' "$p" "$id" "$p" "${tag:0:1}" "$i" "$i"
            i=$((i + 1))
        done
    } >"$work/$tag.toml"
    "$VR" run -c "$work/$tag.toml" 2>"$work/$tag.log" &
    pids+=($!)
    for _ in $(seq 100); do [ -S "$work/$tag.sock" ] && break; sleep 0.05; done
    [ -S "$work/$tag.sock" ] || { cat "$work/$tag.log" >&2; exit 1; }
    local i=1 p ns
    for p in "$@"; do
        ns=vo$id-$p
        ip netns add "$ns"
        ip link set "vo$id-$p" netns "$ns"
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "10.7.0.$i/24" dev "vo$id-$p"
        ip -n "$ns" link set "vo$id-$p" up
        i=$((i + 1))
    done
}

tcp() { # client-ns server-ns -> Gbit/s
    ip netns exec "$2" iperf3 -s -1 >/dev/null 2>&1 &
    local s=$!; sleep 0.5
    ip netns exec "$1" iperf3 -c 10.7.0.2 -t "$DURATION" -J |
        python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
    wait "$s" 2>/dev/null || true
}
pps() { # client-ns server-ns -> 64-byte UDP packets/s received
    ip netns exec "$2" iperf3 -s -1 >/dev/null 2>&1 &
    local s=$!; sleep 0.5
    ip netns exec "$1" iperf3 -c 10.7.0.2 -u -b 0 -l 64 -t "$DURATION" -J |
        python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum"]; print("%.0f" % ((e["packets"]-e["lost_packets"])/e["seconds"]))'
    wait "$s" 2>/dev/null || true
}

start a "" a1 a2
mport=$(free_port)
start b "metrics_listen = \"127.0.0.1:$mport\"" b1 b2 b3
must_ping "vo$id-a1" 10.7.0.2 "plain" "$work/a.log"
must_ping "vo$id-b1" 10.7.0.2 "observed" "$work/b.log"
# The observers: a scrape every second, a capture of the idle port.
# (bash's /dev/tcp and one cat per scrape: the scraper itself should cost next to nothing)
scrape() {
    exec 3<>"/dev/tcp/127.0.0.1/$mport" || return 1
    printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
    cat <&3 >/dev/null
    exec 3<&-
}
( while :; do scrape || echo "scrape failed" >&2; sleep 1; done ) &
pids+=($!)
"$VR" ctl -s "$work/b.sock" capture b3 -w /dev/null 2>"$work/capture.log" &
pids+=($!)
sleep 1

at=() bt=() ap=() bp=()
for r in $(seq "$ROUNDS"); do
    echo "round $r/$ROUNDS ..." >&2
    # Alternate which goes first, so neither always runs on a warmer (or busier) machine.
    if [ $((r % 2)) = 1 ]; then
        at+=("$(tcp "vo$id-a1" "vo$id-a2")"); bt+=("$(tcp "vo$id-b1" "vo$id-b2")")
        ap+=("$(pps "vo$id-a1" "vo$id-a2")"); bp+=("$(pps "vo$id-b1" "vo$id-b2")")
    else
        bt+=("$(tcp "vo$id-b1" "vo$id-b2")"); at+=("$(tcp "vo$id-a1" "vo$id-a2")")
        bp+=("$(pps "vo$id-b1" "vo$id-b2")"); ap+=("$(pps "vo$id-a1" "vo$id-a2")")
    fi
    echo "   TCP plain $(last at) observed $(last bt) Gbit/s   UDP-64 plain $(last ap) observed $(last bp) pkt/s" >&2
done
a_t=$(median "${at[@]}") b_t=$(median "${bt[@]}")
a_p=$(MEDIAN_FMT=%.0f median "${ap[@]}") b_p=$(MEDIAN_FMT=%.0f median "${bp[@]}")
scrapes=$(python3 -c 'import sys,urllib.request; t=urllib.request.urlopen(sys.argv[1]).read().decode(); print(sum(1 for l in t.splitlines() if not l.startswith("#")))' "http://127.0.0.1:$mport/metrics")
echo
echo "observability cost (median of $ROUNDS rounds, ${DURATION}s each)"
printf '%-34s %12s %12s %8s\n' "" plain observed ratio
printf '%-34s %12s %12s %8s\n' "iperf3 TCP, 1 stream (Gbit/s)" "$a_t" "$b_t" "$(ratio "$b_t" "$a_t")"
printf '%-34s %12s %12s %8s\n' "UDP 64-byte (packets/s)" "$a_p" "$b_p" "$(ratio "$b_p" "$a_p")"
echo "(observed: metrics scraped every 1 s, $scrapes series per scrape; capture of an idle port running)"
