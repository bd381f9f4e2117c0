# Sourced by scripts/bench.sh and scripts/lib/bench-*.sh (from the repository root): which halves
# run (BENCH_ONLY), and the statistics the side-by-side tables are made of.
BENCH_ONLY=${BENCH_ONLY:-}
case "$BENCH_ONLY" in
    "") run_vr=1 run_k=1 ;;
    kernel) run_vr=0 run_k=1 ;;
    vrouter) run_vr=1 run_k=0 ;;
    *) echo "BENCH_ONLY must be empty, kernel or vrouter (got '$BENCH_ONLY')" >&2; exit 1 ;;
esac
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
