# Sourced by scripts/bench.sh and scripts/lib/bench-*.sh (from the repository root): which halves
# run (BENCH_ONLY), the statistics the side-by-side tables are made of, and the namespace
# chores every benchmark shares.
BENCH_ONLY=${BENCH_ONLY:-}
case "$BENCH_ONLY" in
    "") run_vr=1 run_k=1 ;;
    kernel) run_vr=0 run_k=1 ;;
    vrouter) run_vr=1 run_k=0 ;;
    *) echo "BENCH_ONLY must be empty, kernel or vrouter (got '$BENCH_ONLY')" >&2; exit 1 ;;
esac
need_root() { # "$@" of the script -> returns as root: re-runs the script through sudo for
    # another user (where there is sudo), or says it cannot
    [ "$(id -u)" = 0 ] && return 0
    command -v sudo >/dev/null && exec sudo -E bash "$0" "$@"
    echo "$0 needs root (and there is no sudo here)" >&2
    exit 1
}
release_build() { # builds vrouter (release) with the machine's toolchain; sets VR
    source scripts/deps.sh
    export PATH="$HOME/.cargo/bin:$PATH"
    VR=$PWD/target/release/vrouter
    cargo build --release --locked -q
}
median() { # values ("-" when none), printed with MEDIAN_FMT (default %.2f)
    [ $# -gt 0 ] || { echo -; return; }
    python3 -c 'import sys,statistics; print(sys.argv[1] % statistics.median(float(x) for x in sys.argv[2:]))' "${MEDIAN_FMT:-%.2f}" "$@"
}
last() { # array-name -> its last value, or "-" when empty
    local -n arr=$1
    if [ ${#arr[@]} -gt 0 ]; then echo "${arr[-1]}"; else echo -; fi
}
ratio() { # a b -> a/b, or "-" when either is missing
    if [ "$1" = - ] || [ "$2" = - ]; then echo -; else python3 -c "print('%.2f' % ($1/$2))"; fi
}
del_namespaces() { # ns... -> ends what is left running in them (a server after a failed run),
    # TERM first, KILL after 2 s, then deletes them. Only our own namespaces are ever passed.
    local n p
    for n in "$@"; do
        for p in $(ip netns pids "$n" 2>/dev/null); do kill "$p" 2>/dev/null; done
        for _ in $(seq 20); do [ -z "$(ip netns pids "$n" 2>/dev/null)" ] && break; sleep 0.1; done
        for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$n" 2>/dev/null
    done
}
must_ping() { # ns target label log... -> 0 if ns reaches target; else says so with the logs' tails
    local ns=$1 dst=$2 what=$3; shift 3
    ip netns exec "$ns" ping -c 3 -W 1 "$dst" >/dev/null && return 0
    echo "$what: $ns cannot ping $dst" >&2
    local f; for f in "$@"; do echo "--- $f" >&2; tail -20 "$f" >&2; done
    return 1
}
