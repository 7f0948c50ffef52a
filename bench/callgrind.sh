#!/usr/bin/env bash
# Instructions per relayed message and per login, counted by valgrind's
# callgrind in the nginx worker (deterministic, unlike CPU time):
#   bench/callgrind.sh [options] TREE|MODULE.so [TREE|MODULE.so]
#     TREE        a checkout of the project: its scripts/build.sh builds
#                 TREE/build/ngx_stream_xmpp_cm_module.so
#     MODULE.so   a module already built
#   With two, the first is "before" and the second "after": their runs
#   are interleaved, and the ratio after/before is printed.
#   --reps K          nginx instances per module (3)
#   --rate R          offered msg/s of the message phases (500)
#   -n N              clients of the message phases, in pairs (20)
#   --short S         duration of the short message phase, s (2)
#   --long S          duration of the long message phase, s (8)
#   --logins A,B      logins of the two login phases (50,250)
#   --top N           with two modules: self cost per message of each
#                     library (object), and the N functions whose self cost
#                     per message changed most (10; 0: none)
#   --alias SED       a sed script applied to the before module's function
#                     names, for functions renamed between the two, e.g.
#                     's/_session_/_stream_/'
#   --keep DIR        keep the callgrind files, nginx logs and loadgen JSON
#   --no-build        TREE: use TREE/build/ngx_stream_xmpp_cm_module.so as is
#   --conf1 TEXT      directives added to the CM's server block in the runs
#   --conf2 TEXT      of the first / second module; the same module twice
#                     compares two settings in one run, e.g. confirmed
#                     delivery off (before) and on (after):
#                       bench/callgrind.sh --conf1 'xmpp_cm_confirm off;' \
#                           --conf2 'xmpp_cm_confirm on;' M.so M.so
#
# One nginx (master_process off, daemon off: the worker is the process
# valgrind starts) runs under callgrind with the module in front of
# bench/fakeof. bench/loadgen drives it in phases, each a fresh loadgen
# run: a warm-up message phase (discarded: lazy binding, first
# allocations), a short and a long message phase at the same rate, then
# two login phases of A and B logins (login mode: log in, disconnect).
# After each phase the script waits until the worker uses no CPU and
# has callgrind dump its counts (callgrind_control -d: a dump holds the
# instructions since the previous one). The figures are slopes:
#   Ir/msg   = (Ir long - Ir short) / (messages long - messages short)
#   Ir/login = (Ir B - Ir A) / (B - A)
# so that what every phase has once (loadgen's logins and disconnects in
# the message phases, the process's start) cancels. Ir is the "totals:"
# line of each dump: user-space instructions of the whole worker (nginx,
# the module, libc, expat, zlib), not the kernel's.
# Installs valgrind with apt-get when missing. Needs root (or ptrace
# rights on the worker) for callgrind_control.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
nginx=/usr/sbin/nginx
stream_so=/usr/lib/nginx/modules/ngx_stream_module.so

reps=3
rate=500
clients=20
short=2
long=8
logins=50,250
topn=10
keep=
build=1
alias=
conf1=
conf2=

usage() {
    sed -n '2,/^#$/{/^#$/d;p}' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
    --reps) reps=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    -n) clients=$2; shift 2 ;;
    --short) short=$2; shift 2 ;;
    --long) long=$2; shift 2 ;;
    --logins) logins=$2; shift 2 ;;
    --top) topn=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --alias) alias=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --conf1) conf1=$2; shift 2 ;;
    --conf2) conf2=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "callgrind.sh: unknown option $1" >&2; usage ;;
    *) break ;;
    esac
done
[ $# -ge 1 ] && [ $# -le 2 ] || usage
login_a=${logins%,*}
login_b=${logins#*,}

log() { echo "callgrind.sh: $*" >&2; }
tab=$(printf '\t')

# valgrind (callgrind, callgrind_control, vgdb)
if ! command -v valgrind >/dev/null 2>&1 \
    || ! command -v callgrind_control >/dev/null 2>&1
then
    sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    log "installing valgrind"
    $sudo apt-get install -y -q --no-install-recommends valgrind >/dev/null \
        || { $sudo apt-get update -q >/dev/null
             $sudo apt-get install -y -q --no-install-recommends valgrind \
                 >/dev/null; }
fi

make -s -C "$here" loadgen fakeof >&2

work=$(mktemp -d /tmp/callgrind-bench.XXXXXX)
pids=()

cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ -n "$keep" ]; then
        mkdir -p "$keep"
        cp -a "$work"/. "$keep"/
        log "kept in $keep"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# the modules: a tree is built, then copied so that a rebuild during the
# run changes nothing
labels=()
if [ $# -eq 2 ]; then labels=(before after); else labels=(tree); fi
i=0
for arg in "$@"; do
    label=${labels[$i]}
    if [ -d "$arg" ]; then
        [ "$build" = 0 ] || bash "$arg/scripts/build.sh" >&2
        so="$arg/build/ngx_stream_xmpp_cm_module.so"
        desc="$(cd "$arg" && pwd) ($(git -C "$arg" rev-parse --short HEAD \
              2>/dev/null || echo '?')"
        if [ -n "$(git -C "$arg" status --porcelain -- src config \
                   2>/dev/null)" ]; then
            desc="$desc + uncommitted changes"
        fi
        desc="$desc)"
    else
        so=$arg
        desc=$(cd "$(dirname "$arg")" && pwd)/$(basename "$arg")
    fi
    [ -f "$so" ] || { log "no module $so"; exit 1; }
    mkdir -p "$work/$label"
    cp "$so" "$work/$label/ngx_stream_xmpp_cm_module.so"
    if [ $i = 0 ]; then conf=$conf1; else conf=$conf2; fi
    [ -z "$conf" ] || desc="$desc [$conf]"
    echo "$desc" > "$work/$label/desc"
    echo "$conf" > "$work/$label/conf"
    i=$((i + 1))
done

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU ticks (utime + stime) of a process
ticks() {
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || { echo gone; return; }
    st=${st##*) }
    set -- $st
    echo $((${12} + ${13}))
}

# wait until the process has used no CPU for 0.4 s (at most 60 s)
wait_idle() {
    local a b n=0
    a=$(ticks "$1")
    while [ $n -lt 150 ]; do
        sleep 0.4
        b=$(ticks "$1")
        [ "$a" = "$b" ] && return 0
        a=$b
        n=$((n + 1))
    done
    log "worker $1 still busy after 60 s"
}

# JSON number after "key": in a one-line JSON (first occurrence)
jnum() {
    grep -o "\"$2\":[0-9.]*" "$1" | head -n 1 | cut -d: -f2
}

# run_instance LABEL REP: one nginx under callgrind, all phases; appends
# one line to $work/results
run_instance() {
    local label=$1 rep=$2 dir fport port vpid fpid cg nd phase
    local -a dumps=()
    dir="$work/$label/rep$rep"
    mkdir -p "$dir"
    "$here/fakeof" --listen 127.0.0.1:0 --domain localhost \
        --secret cmsecret > "$dir/fakeof.out" 2>&1 &
    fpid=$!
    pids+=("$fpid")
    for _ in $(seq 100); do
        fport=$(sed -n 's/^READY \([0-9]*\)$/\1/p' "$dir/fakeof.out")
        [ -n "$fport" ] && break
        sleep 0.1
    done
    [ -n "$fport" ] || { log "fakeof did not start"; exit 1; }
    port=$(free_port)
    cat > "$dir/nginx.conf" <<EOF
load_module $stream_so;
load_module $work/$label/ngx_stream_xmpp_cm_module.so;
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 4096;
error_log $dir/error.log notice;
pid $dir/nginx.pid;
events { worker_connections 2048; }
stream {
    server {
        listen 127.0.0.1:$port backlog=1024;
        xmpp_cm_pass 127.0.0.1:$fport;
        xmpp_cm_domain localhost;
        xmpp_cm_secret cmsecret;
        xmpp_cm_name bench;
        $(cat "$work/$label/conf")
    }
}
EOF
    cg="$dir/callgrind.out"
    valgrind --tool=callgrind --callgrind-out-file="$cg" \
        "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        > "$dir/valgrind.log" 2>&1 &
    vpid=$!
    pids+=("$vpid")
    for _ in $(seq 300); do
        [ "$(grep -c 'connected to Openfire' "$dir/error.log" 2>/dev/null)" \
            -ge 4 ] 2>/dev/null && break
        kill -0 "$vpid" 2>/dev/null || break
        sleep 0.2
    done
    [ "$(grep -c 'connected to Openfire' "$dir/error.log" 2>/dev/null)" \
        -ge 4 ] 2>/dev/null || {
        log "$label: nginx under callgrind did not connect to fakeof"
        tail -n 5 "$dir/error.log" "$dir/valgrind.log" >&2 || true
        exit 1; }

    nd=0
    for phase in warm msg_a msg_b login_a login_b; do
        case $phase in
        warm|msg_a) set -- --mode msg -n "$clients" --rate "$rate" \
                        --duration "$short" ;;
        msg_b)      set -- --mode msg -n "$clients" --rate "$rate" \
                        --duration "$long" ;;
        login_a)    set -- --mode login -n "$login_a" --window 10 ;;
        login_b)    set -- --mode login -n "$login_b" --window 10 ;;
        esac
        "$here/loadgen" --port "$port" --domain localhost \
            --login-timeout 120 --drain 10 "$@" > "$dir/$phase.json"
        wait_idle "$vpid"
        callgrind_control -d "$vpid" > /dev/null 2>&1
        nd=$((nd + 1))
        for _ in $(seq 100); do
            grep -q '^totals:' "$cg.$nd" 2>/dev/null && break
            sleep 0.1
        done
        grep -q '^totals:' "$cg.$nd" || { log "no dump $cg.$nd"; exit 1; }
        dumps+=("$cg.$nd")
        if [ "$(jnum "$dir/$phase.json" failed)" != 0 ]; then
            log "$label rep $rep $phase: $(jnum "$dir/$phase.json" failed) logins failed"
        fi
        case $phase in msg_*)
            if [ "$(jnum "$dir/$phase.json" sent)" != \
                 "$(jnum "$dir/$phase.json" received)" ]; then
                log "$label rep $rep $phase: sent $(jnum "$dir/$phase.json" sent), received $(jnum "$dir/$phase.json" received)"
            fi ;;
        esac
    done
    kill "$vpid" 2>/dev/null || true
    wait "$vpid" 2>/dev/null || true
    kill "$fpid" 2>/dev/null || true
    wait "$fpid" 2>/dev/null || true
    grep -E '\[(alert|crit|emerg)\]' "$dir/error.log" | head -n 3 >&2 || true

    # label rep  msgs_a ir_a  msgs_b ir_b  logins_a ir_a  logins_b ir_b
    echo "$label $rep" \
        "$(jnum "$dir/msg_a.json" received) $(sed -n 's/^totals: //p' "${dumps[1]}")" \
        "$(jnum "$dir/msg_b.json" received) $(sed -n 's/^totals: //p' "${dumps[2]}")" \
        "$(jnum "$dir/login_a.json" ok) $(sed -n 's/^totals: //p' "${dumps[3]}")" \
        "$(jnum "$dir/login_b.json" ok) $(sed -n 's/^totals: //p' "${dumps[4]}")" \
        >> "$work/results"
    echo "${dumps[1]} ${dumps[2]} $(jnum "$dir/msg_a.json" received)" \
         "$(jnum "$dir/msg_b.json" received)" > "$dir/msgdumps"
    awk '{ printf "callgrind.sh: %s rep %s: %.0f Ir/msg, %.0f Ir/login\n",
           $1, $2, ($6 - $4) / ($5 - $3), ($10 - $8) / ($9 - $7) }' \
        <(tail -n 1 "$work/results") >&2
}

# self cost per function (name [object]) of one callgrind dump
selfcost() {
    awk '
    function setname(s,   id, rest) {
        if (match(s, /^\([0-9]+\)/)) {
            id = substr(s, 2, RLENGTH - 2)
            rest = substr(s, RLENGTH + 1)
            sub(/^ /, "", rest)
            if (rest != "") nm[id] = rest
            return nm[id]
        }
        return s
    }
    function setobj(s,   id, rest) {
        if (match(s, /^\([0-9]+\)/)) {
            id = substr(s, 2, RLENGTH - 2)
            rest = substr(s, RLENGTH + 1)
            sub(/^ /, "", rest)
            if (rest != "") on[id] = rest
            s = on[id]
        }
        sub(/.*\//, "", s)
        return s
    }
    /^ob=/  { ob = setobj(substr($0, 4)); next }
    /^cob=/ { setobj(substr($0, 5)); next }
    /^fn=/  { cur = setname(substr($0, 4)) " [" ob "]"; skip = 0; next }
    /^cfn=/ { setname(substr($0, 5)); next }
    /^calls=/ { skip = 1; next }
    /^[0-9+*-]/ {
        if (skip) { skip = 0; next }
        self[cur] += $NF
        next
    }
    END { for (f in self) printf "%.0f\t%s\n", self[f], f }
    ' "$1"
}

# per-message self cost of each function of LABEL, averaged over its
# reps: "function [object]<TAB>Ir/msg", sorted; --alias renames before's
permsg() {
    local label=$1 d a b ma mb
    for d in "$work/$label"/rep*/msgdumps; do
        read -r a b ma mb < "$d"
        { selfcost "$a" | sed 's/^/A\t/'; selfcost "$b" | sed 's/^/B\t/'; } |
        awk -F'\t' -v n=$((mb - ma)) '
            $1 == "A" { c[$3] -= $2 } $1 == "B" { c[$3] += $2 }
            END { for (f in c) printf "%s\t%.3f\n", f, c[f] / n }'
    done | awk -F'\t' -v reps="$reps" '
        { s[$1] += $2 } END { for (f in s) printf "%s\t%.3f\n", f, s[f] / reps }' |
    if [ "$label" = before ] && [ -n "$alias" ]; then
        sed "$alias" | awk -F'\t' '{ s[$1] += $2 }
            END { for (f in s) printf "%s\t%.3f\n", f, s[f] }'
    else
        cat
    fi | sort -t "$tab" -k1,1
}

log "work directory $work"
for rep in $(seq "$reps"); do
    for label in "${labels[@]}"; do
        log "$label rep $rep/$reps"
        run_instance "$label" "$rep"
    done
done

echo
echo "callgrind instruction counts (Ir) of the nginx worker, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "message phases: $clients clients, $rate msg/s, ${short} s and ${long} s;" \
     "login phases: $login_a and $login_b logins (window 10)"
for label in "${labels[@]}"; do
    echo "  $label: $(cat "$work/$label/desc")"
done
awk -v labels="${labels[*]}" '
    {
        m = ($6 - $4) / ($5 - $3); l = ($10 - $8) / ($9 - $7)
        k = $1; n[k]++; sm[k] += m; sl[k] += l
        if (!(k in mmin) || m < mmin[k]) mmin[k] = m
        if (!(k in mmax) || m > mmax[k]) mmax[k] = m
        if (!(k in lmin) || l < lmin[k]) lmin[k] = l
        if (!(k in lmax) || l > lmax[k]) lmax[k] = l
        ms[k] = ms[k] sprintf(" %.0f", m); ls[k] = ls[k] sprintf(" %.0f", l)
    }
    END {
        printf "%-7s %10s %8s %11s %8s   %s\n", "", "Ir/msg", "spread",
               "Ir/login", "spread", "runs: Ir/msg | Ir/login"
        c = split(labels, lab, " ")
        for (i = 1; i <= c; i++) {
            k = lab[i]; am[k] = sm[k] / n[k]; al[k] = sl[k] / n[k]
            printf "%-7s %10.0f %7.2f%% %11.0f %7.2f%%  %s |%s\n", k, am[k],
                   100 * (mmax[k] - mmin[k]) / am[k], al[k],
                   100 * (lmax[k] - lmin[k]) / al[k], ms[k], ls[k]
        }
        if (c == 2)
            printf "after/before  Ir/msg %.4f   Ir/login %.4f\n",
                   am["after"] / am["before"], al["after"] / al["before"]
        print "(spread: (max - min) / mean over the runs)"
    }' "$work/results"

if [ ${#labels[@]} -eq 2 ] && [ "$topn" -gt 0 ]; then
    permsg before > "$work/before.permsg"
    permsg after > "$work/after.permsg"
    join -t "$tab" -a 1 -a 2 -e 0 -o 0,1.2,2.2 "$work/before.permsg" \
        "$work/after.permsg" > "$work/permsg"
    echo
    echo "self Ir per message by object, mean of the runs"
    printf "%10s %10s %10s  %s\n" before after diff object
    awk -F'\t' '{ o = $1; sub(/.*\[/, "", o); sub(/\]$/, "", o)
                  b[o] += $2; a[o] += $3 }
        END { for (o in b) if (b[o] >= 0.5 || a[o] >= 0.5)
                  printf "%10.1f %10.1f %+10.1f  %s\n", b[o], a[o], a[o] - b[o], o }' \
        "$work/permsg" | sort -k1,1gr
    echo
    echo "self Ir per message by function, mean of the runs: the $topn largest" \
         "changes (after - before)${alias:+; before renamed by '$alias'}"
    awk -F'\t' '{ d = $3 - $2; printf "%s\t%s\t%s\t%s\n", (d < 0 ? -d : d), $2, $3, $1 }' \
        "$work/permsg" | sort -t "$tab" -k1,1gr | head -n "$topn" |
    awk -F'\t' 'BEGIN { printf "%10s %10s %10s  %s\n", "before", "after", "diff", "function [object]" }
        { printf "%10.1f %10.1f %+10.1f  %s\n", $2, $3, $3 - $2, $4 }'
fi
