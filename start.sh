#!/bin/sh
# Start or stop a local cluster: a master and N workers, in the background.
#
#   sh start.sh [SECRET] [WORKERS [PORT]]   start (default: 2 workers, master on 6000)
#   sh start.sh [SECRET] stop [PORT]        shut the cluster on PORT down cleanly
#   sh start.sh --help                      usage
#
# SECRET is --secret-file PATH (default: $MAPREDUCE_SECRET_FILE) or
# --new-secret, which writes a random one to clusters/PORT/secret (mode 600):
# every message of the cluster is then signed with it (README, "Running on
# several machines"). The path is recorded in clusters/PORT/secret-file, so
# that `stop` finds it.
#
# The master listens on TCP PORT and UDP PORT-1, the workers on PORT+1 ...
# PORT+N. Each port has a cluster of its own, kept in clusters/PORT/: the
# logs, the pid files, and the processes' working directory, so the master's
# var/ is clusters/PORT/var/. Two clusters from one checkout therefore never
# share a file, and this script acts only on the one whose PORT it is given.
#
# A pid file is only ever trusted after /proc shows that its process is the
# one this script started there: this checkout's master.py PORT (or
# worker.py PORT WPORT), running in clusters/PORT/. Any other pid (an exited
# cluster's, since reused by an unrelated program) is a stale file: it is
# removed and its process never signalled.
#
# A start or a stop holds an exclusive lock (flock) on clusters/PORT/ itself
# from before it reads a pid file until it exits, so two runs on one port never
# interleave: the second says another start.sh is working there and touches
# nothing. The master and workers do not inherit the lock.
#
# Lists of pid file names are split on spaces on purpose: start.sh only ever
# reads names it writes itself (master.pid, worker-WPORT.pid), see pid_files.
# shellcheck disable=SC2046,SC2086
set -eu
PYTHON=${PYTHON:-python3}
case $PYTHON in  # the processes start in clusters/PORT/, where a relative path breaks
    /*) ;;
    */*) PYTHON=$(pwd)/$PYTHON ;;
esac
# Physical path, so it matches what /proc shows of the processes started here;
# the script's own, not a link's to it, so that master.py is found beside it.
TOP=$(cd -P "$(dirname "$(readlink -f "$0")")" && pwd -P)
# For the hints printed: they work from any directory.
SELF="sh $TOP/start.sh"
CLUSTERS=clusters
DEFAULT_WORKERS=2
DEFAULT_PORT=6000
# More workers than a laptop's cores many times over: a larger WORKERS is
# most likely a port typed without the WORKERS before it.
MAX_WORKERS=64
# The master's heartbeat port, PORT-1, must be a port too; the workers'
# ports PORT+1 ... PORT+WORKERS must not pass the last one.
MIN_PORT=3
MAX_PORT=65535
# Seconds for the master to answer a client, and then for every worker to
# show up as registered with it: a Python start on a loaded 2-core machine
# takes a fraction of a second, so these only end a start that went wrong.
MASTER_START_TIMEOUT=10
WORKERS_READY_TIMEOUT=15
# Seconds for the cluster to exit after the shutdown message (the master
# forwards it to its workers), then after SIGTERM, then after SIGKILL.
SHUTDOWN_TIMEOUT=10
TERM_TIMEOUT=5
KILL_TIMEOUT=2
POLL_SECONDS=0.1
SECRET_VARIABLE=MAPREDUCE_SECRET_FILE
SECRET_RECORD=secret-file  # in clusters/PORT/: the path of the secret the cluster uses
NEW_SECRET_NAME=secret     # in clusters/PORT/: a secret --new-secret made
# Lines of a failed process's log shown when a start fails.
LOG_TAIL_LINES=10

usage() {
    cat <<EOF
usage: sh start.sh [SECRET] [WORKERS [PORT]]   start a master on TCP PORT (default $DEFAULT_PORT; heartbeats on UDP PORT-1)
                                               and WORKERS workers (default $DEFAULT_WORKERS) on TCP PORT+1 ... PORT+WORKERS
       sh start.sh [SECRET] stop [PORT]        stop the cluster on PORT (default $DEFAULT_PORT)
       sh start.sh --help                      show this help
SECRET: --secret-file PATH (default: \$$SECRET_VARIABLE) signs every message with the secret in PATH;
        --new-secret makes a random one in $CLUSTERS/PORT/secret.
Each cluster keeps its logs, pid files and var/ in $CLUSTERS/PORT/.
EOF
}

bad_usage() {  # MESSAGE: a one-line error and the usage on stderr; nothing is started
    echo "start.sh: $1" >&2
    usage >&2
    exit 2
}

number() {  # VALUE: true for a plain decimal number the shell's arithmetic reads as such
    case $1 in
        '' | *[!0-9]* | 0?*) return 1 ;;  # a leading 0 would be read as octal
    esac
    [ "${#1}" -le 5 ]  # no port or worker count is longer; longer ones could overflow
}

say_stale() {  # NAME WHY
    echo "start.sh: removed stale pid file $CLUSTERS/$PORT/$1 ($2)" >&2
}

# --- what runs: /proc ------------------------------------------------------------

running() {  # PID: true while the process exists and has not exited (a zombie has)
    state=$( { sed 's/.*) //' "/proc/$1/stat" | cut -c1; } 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

resolve() {  # PATH DIR: PATH made absolute from DIR, with its directory's links resolved
    case $1 in
        /*) path=$1 ;;
        *) path=$2/$1 ;;
    esac
    printf '%s\n' "$(cd -P "$(dirname "$path")" 2>/dev/null && pwd -P)/$(basename "$path")"
}

is_ours() {  # PID SCRIPT ARG...: true if PID runs this checkout's SCRIPT ARG... in CLUSTER_DIR
    pid=$1 script=$2
    shift 2
    case $pid in
        '' | *[!0-9]* | 0*) return 1 ;;
    esac
    # Unreadable for another user's process and gone for an exited one: not ours either way.
    cwd=$(cd -P "/proc/$pid/cwd" 2>/dev/null && pwd -P) || return 1
    [ "$cwd" = "$CLUSTER_DIR" ] || return 1
    # The arguments, one a line, from the first one naming a file called SCRIPT on.
    found=$( { tr '\0' '\n' < "/proc/$pid/cmdline" | awk -v s="$script" \
               'found || $0 == s || substr($0, length($0) - length(s)) == "/" s {
                    found = 1; print }'; } 2>/dev/null) || return 1
    [ -n "$found" ] || return 1
    [ "$(resolve "$(printf '%s\n' "$found" | head -n 1)" "$cwd")" = "$TOP/$script" ] ||
        return 1
    [ "$(printf '%s\n' "$found" | tail -n +2)" = "$(printf '%s\n' "$@")" ]
}

owns() {  # NAME: set PID from pid file NAME; true if its process is the one started as NAME
    PID=$(cat "$CLUSTER_DIR/$1" 2>/dev/null) || PID=
    case $1 in
        master.pid) is_ours "$PID" master.py "$PORT" ;;
        worker-*.pid)
            wport=${1#worker-}
            is_ours "$PID" worker.py "$PORT" "${wport%.pid}" ;;
        *) return 1 ;;
    esac
}

pid_files() {  # the names of this cluster's pid files, one a line (only those start.sh writes)
    for path in "$CLUSTER_DIR"/*.pid; do
        [ -f "$path" ] || continue
        name=${path##*/} wport=${path##*/worker-}
        case $name in
            master.pid) echo "$name" ;;
            worker-*.pid) if number "${wport%.pid}"; then echo "$name"; fi ;;
        esac
    done
}

live_of() {  # NAME...: the names among NAME... whose process is still ours and running
    for name in "$@"; do
        owns "$name" && echo "$name"
    done
    return 0
}

wait_gone() {  # SECONDS NAME...: wait until none of NAME... runs; false if some still do
    deadline=$(($(date +%s) + $1))
    shift
    while [ -n "$(live_of "$@")" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep "$POLL_SECONDS"
    done
}

signal_live() {  # SIGNAL WHY NAME...: send SIGNAL to each NAME still ours, checked just before
    sig=$1 why=$2
    shift 2
    for name in "$@"; do
        if owns "$name"; then
            echo "start.sh: ${name%.pid} (pid $PID) $why; sending SIG$sig" >&2
            kill "-$sig" "$PID" 2>/dev/null || true
        fi
    done
}

end_processes() {  # NAME...: SIGTERM, then SIGKILL, whichever of NAME... still run
    wait_gone 0 "$@" && return 0
    signal_live TERM "$WHY_TERM" $(live_of "$@")
    wait_gone "$TERM_TIMEOUT" "$@" && return 0
    signal_live KILL "did not exit after SIGTERM" $(live_of "$@")
    wait_gone "$KILL_TIMEOUT" "$@"
}

remove_gone() {  # NAME...: remove the pid files of those of NAME... that no longer run
    for name in "$@"; do
        owns "$name" || rm -f "$CLUSTER_DIR/$name"
    done
}

sweep() {  # print the names of this cluster's live processes; remove stale pid files
    for name in $(pid_files); do
        if owns "$name"; then
            echo "$name"
        else
            if number "$PID" && [ ! -d "/proc/$PID" ]; then
                say_stale "$name" "its process, pid $PID, is gone"
            else
                say_stale "$name" "pid '$PID' is not this cluster's ${name%.pid}; left alone"
            fi
            rm -f "$CLUSTER_DIR/$name"
        fi
    done
}

# --- stop ----------------------------------------------------------------------------

stop_cluster() {
    recorded_secret
    live=$(sweep)
    if [ -z "$live" ]; then
        echo "start.sh: no cluster running on port $PORT"
        return 0
    fi
    # The shutdown message goes to whatever listens on PORT: only to our own master.
    WHY_TERM="has no master to shut it down"
    if owns master.pid; then
        "$PYTHON" "$TOP/send_job.py" "$PORT" --shutdown >/dev/null || true
        wait_gone "$SHUTDOWN_TIMEOUT" $live || true
        WHY_TERM="did not exit after the shutdown message"
    fi
    ended=0
    end_processes $live || ended=1
    remove_gone $live
    if [ "$ended" -ne 0 ]; then
        echo "start.sh: could not stop $(live_of $live | tr '\n' ' ')on port $PORT;" \
             "their pid files are kept in $CLUSTERS/$PORT/" >&2
        exit 1
    fi
    echo "start.sh: cluster on port $PORT stopped"
}

# --- start ---------------------------------------------------------------------------

busy_ports() {  # print the ports this cluster needs that cannot be bound now, or nothing
    "$PYTHON" - "$PORT" "$WORKERS" <<'EOF'
import socket, sys
port, workers = int(sys.argv[1]), int(sys.argv[2])
needs = [(socket.SOCK_STREAM, port, "master"), (socket.SOCK_DGRAM, port - 1, "master heartbeats")]
needs += [(socket.SOCK_STREAM, p, "worker") for p in range(port + 1, port + workers + 1)]
busy = []
for kind, number, role in needs:
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:  # as the servers do: a port in TIME_WAIT is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("localhost", number))
        except OSError as error:
            name = "TCP" if kind == socket.SOCK_STREAM else "UDP"
            busy.append(f"{name} {number} ({role}: {error.strerror})")
print(", ".join(busy))
EOF
}

spawn() {  # NAME SCRIPT ARG...: start this checkout's SCRIPT in CLUSTER_DIR; pid to NAME.pid
    name=$1 script=$2
    shift 2
    # exec, so that $! is the Python process itself and /proc shows its command line;
    # without fd 9, so that the cluster does not hold this script's lock.
    (cd "$CLUSTER_DIR" && exec "$PYTHON" "$TOP/$script" "$@" 9<&-) \
        > "$CLUSTER_DIR/$name.log" 2>&1 &
    UNRECORDED=$! UNRECORDED_NAME=$name  # until its pid file is written: see fail_start
    if ! error=$( { echo "$UNRECORDED" > "$CLUSTER_DIR/$name.pid"; } 2>&1 ); then
        fail_start "$name" "could not write its pid to $CLUSTERS/$PORT/$name.pid (${error##*: })"
    fi
    UNRECORDED=
    STARTED="$STARTED $name.pid"
}

end_unrecorded() {  # stop the child started last, whose pid file could not be written
    [ -n "$UNRECORDED" ] || return 0
    # Our child, not yet waited for: its pid cannot have been reused.
    echo "start.sh: $UNRECORDED_NAME (pid $UNRECORDED) $WHY_TERM; sending SIGTERM" >&2
    kill -TERM "$UNRECORDED" 2>/dev/null || true
    deadline=$(($(date +%s) + TERM_TIMEOUT))
    while running "$UNRECORDED" && [ "$(date +%s)" -lt "$deadline" ]; do
        sleep "$POLL_SECONDS"
    done
    kill -KILL "$UNRECORDED" 2>/dev/null || true
    wait "$UNRECORDED" 2>/dev/null || true
    UNRECORDED=
}

fail_start() {  # NAME WHY: stop what this run started, show NAME's log, exit 1
    trap - INT TERM HUP
    echo "start.sh: $1 failed: $2" >&2
    if [ -s "$CLUSTER_DIR/$1.log" ]; then
        echo "start.sh: last lines of $CLUSTERS/$PORT/$1.log:" >&2
        tail -n "$LOG_TAIL_LINES" "$CLUSTER_DIR/$1.log" | sed 's/^/    /' >&2
    fi
    WHY_TERM="was started by this failed start"
    end_unrecorded
    end_processes $STARTED || true
    remove_gone $STARTED
    echo "start.sh: nothing left running on port $PORT" >&2
    exit 1
}

check_running() {  # NAME...: fail the start if one of this run's processes has exited
    for name in "$@"; do
        pid=$(cat "$CLUSTER_DIR/$name")
        running "$pid" && continue
        # Only this shell can wait for its child, so not in a $(...) subshell.
        status=0
        wait "$pid" 2>/dev/null || status=$?
        fail_start "${name%.pid}" "exited with status $status"
    done
}

registered() {  # LISTING NAME: true if worker NAME is registered and alive in LISTING
    wpid=$(cat "$CLUSTER_DIR/$2") wport=${2#worker-}
    # Lines are `worker PID HOST:PORT STATE (...)`: its pid, its port, and not dead.
    printf '%s\n' "$1" | awk -v pid="$wpid" -v port="${wport%.pid}" \
        '$1 == "worker" && $2 == pid && $3 ~ (":" port "$") && $4 != "dead" { found = 1 }
         END { exit !found }'
}

wait_master() {  # until the master answers a client (not merely: something is listening)
    deadline=$(($(date +%s) + MASTER_START_TIMEOUT))
    until "$PYTHON" "$TOP/send_job.py" "$PORT" --workers >/dev/null 2>&1; do
        check_running master.pid
        [ "$(date +%s)" -lt "$deadline" ] ||
            fail_start master "it did not answer on port $PORT within $MASTER_START_TIMEOUT s"
        sleep "$POLL_SECONDS"
    done
}

wait_workers() {  # NAME...: until the master lists every one of them as registered
    deadline=$(($(date +%s) + WORKERS_READY_TIMEOUT))
    while :; do
        check_running master.pid "$@"
        listing=$("$PYTHON" "$TOP/send_job.py" "$PORT" --workers 2>/dev/null) || listing=
        missing=
        for name in "$@"; do
            registered "$listing" "$name" || missing="$missing ${name%.pid}"
        done
        [ -n "$missing" ] || return 0
        if [ "$(date +%s)" -ge "$deadline" ]; then
            first=${missing# }
            fail_start "${first%% *}" "not registered with the master after\
 $WORKERS_READY_TIMEOUT s (not registered:$missing)"
        fi
        sleep "$POLL_SECONDS"
    done
}

refuse_if_running() {  # exit 1 if a process of this cluster still runs
    live=$(sweep)
    [ -n "$live" ] || return 0
    name=$(printf '%s\n' "$live" | head -n 1)
    owns "$name" || true
    echo "start.sh: a cluster is already running on port $PORT (${name%.pid}, pid $PID);" \
         "stop it first: $SELF stop $PORT" >&2
    exit 1
}

start_cluster() {
    refuse_if_running
    busy=$(busy_ports) || { echo "start.sh: cannot run $PYTHON (set PYTHON)" >&2; exit 1; }
    if [ -n "$busy" ]; then
        echo "start.sh: cannot start on port $PORT, in use: $busy; nothing started" >&2
        exit 1
    fi
    use_secret
    STARTED=''
    UNRECORDED=''
    trap 'fail_start start "interrupted"' INT TERM HUP
    spawn master master.py "$PORT"
    wait_master
    workers=
    n=1
    while [ "$n" -le "$WORKERS" ]; do
        spawn "worker-$((PORT + n))" worker.py "$PORT" "$((PORT + n))"
        workers="$workers worker-$((PORT + n)).pid"
        n=$((n + 1))
    done
    wait_workers $workers
    trap - INT TERM HUP
    ports="ports $((PORT + 1))-$((PORT + WORKERS))"
    [ "$WORKERS" -gt 1 ] || ports="port $((PORT + 1))"
    echo "start.sh: master on port $PORT with $WORKERS worker(s) on $ports, all registered"
    submit="python3 $TOP/send_job.py $PORT --wait"
    [ -z "$SECRET_FILE" ] || submit="$SECRET_VARIABLE='$SECRET_FILE' $submit"
    echo "start.sh: submit: $submit    stop: $SELF stop $PORT" \
         "   logs: $CLUSTER_DIR/"
}

use_secret() {  # the secret of this start, for every process it starts; recorded for stop
    rm -f "$CLUSTER_DIR/$SECRET_RECORD"
    if [ -n "$NEW_SECRET" ]; then
        SECRET_FILE=$CLUSTER_DIR/$NEW_SECRET_NAME
        rm -f "$SECRET_FILE"
        (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' \
            > "$SECRET_FILE") || { echo "start.sh: cannot write $SECRET_FILE" >&2; exit 1; }
    fi
    if [ -n "$SECRET_FILE" ]; then
        SECRET_FILE=$(resolve "$SECRET_FILE" "$(pwd)")
        [ -f "$SECRET_FILE" ] && [ -r "$SECRET_FILE" ] || { echo "start.sh: the secret" \
            "file $SECRET_FILE is not a readable file; nothing started" >&2; exit 1; }
        printf '%s\n' "$SECRET_FILE" > "$CLUSTER_DIR/$SECRET_RECORD"
        export MAPREDUCE_SECRET_FILE="$SECRET_FILE"
    else
        unset MAPREDUCE_SECRET_FILE
    fi
}

recorded_secret() {  # for stop: the secret the cluster was started with, unless one is given
    if [ -z "$SECRET_GIVEN" ] && [ -f "$CLUSTER_DIR/$SECRET_RECORD" ]; then
        SECRET_FILE=$(cat "$CLUSTER_DIR/$SECRET_RECORD")
    fi
    [ -z "$SECRET_FILE" ] || export MAPREDUCE_SECRET_FILE="$SECRET_FILE"
}

# --- arguments -----------------------------------------------------------------------

check_port() {  # VALUE WORKERS
    highest=$((MAX_PORT - $2)) uses="UDP PORT-1 is used too"
    [ "$2" -eq 0 ] || uses="UDP PORT-1 and TCP PORT+1 ... PORT+$2 are used too"
    if ! number "$1" || [ "$1" -lt "$MIN_PORT" ] || [ "$1" -gt "$highest" ]; then
        bad_usage "PORT must be a number from $MIN_PORT to $highest ($uses), not '$1'"
    fi
}

check_option() {  # VALUE: an unknown option is named as one, not as a bad number
    case $1 in
        -[0-9]*) ;;
        -*) bad_usage "unknown option '$1'" ;;
    esac
}

SECRET_FILE=${MAPREDUCE_SECRET_FILE:-}
SECRET_GIVEN=  # --secret-file on the command line, which outranks a recorded one
NEW_SECRET=
while :; do
    case ${1:-} in
        --secret-file)
            [ $# -ge 2 ] && [ -n "$2" ] || bad_usage "--secret-file needs a PATH"
            SECRET_FILE=$2 SECRET_GIVEN=yes
            shift 2 ;;
        --new-secret) NEW_SECRET=yes; shift ;;
        *) break ;;
    esac
done
[ -z "$NEW_SECRET" ] || [ "${1:-}" != stop ] || bad_usage "--new-secret is for a start, not stop"

case ${1:-} in
    -h | --help | help)
        [ $# -eq 1 ] || bad_usage "--help takes no arguments, got '$*'"
        usage
        exit 0 ;;
    stop)
        [ $# -le 2 ] || bad_usage "too many arguments: '$*'"
        [ $# -lt 2 ] || check_option "$2"
        PORT=${2-$DEFAULT_PORT}
        check_port "$PORT" 0
        COMMAND=stop ;;
    *)
        [ $# -le 2 ] || bad_usage "too many arguments: '$*'"
        for argument in "$@"; do check_option "$argument"; done
        WORKERS=${1-$DEFAULT_WORKERS}  # an empty argument is an error, not the default
        if ! number "$WORKERS" || [ "$WORKERS" -lt 1 ]; then
            bad_usage "WORKERS must be a whole number, 1 or more, not '$WORKERS'"
        fi
        PORT=${2-$DEFAULT_PORT}
        if [ "$WORKERS" -gt "$MAX_WORKERS" ]; then
            # `start.sh 7000`: most likely a port, meant with the default WORKERS.
            if [ $# -eq 1 ] && [ "$WORKERS" -le $((MAX_PORT - DEFAULT_WORKERS)) ]; then
                bad_usage "$WORKERS workers is more than $MAX_WORKERS; to start\
 $DEFAULT_WORKERS workers on port $WORKERS: $SELF $DEFAULT_WORKERS $WORKERS"
            fi
            bad_usage "WORKERS must be at most $MAX_WORKERS, not '$WORKERS'"
        fi
        check_port "$PORT" "$WORKERS"
        COMMAND=start ;;
esac

lock_cluster() {  # hold an exclusive lock on CLUSTER_DIR until this script exits, or exit 1
    command -v flock >/dev/null 2>&1 ||
        { echo "start.sh: flock (from util-linux) is needed and not installed" >&2; exit 1; }
    # `command`: a directory that cannot be opened is an error here, not the shell's exit.
    if ! { command exec 9<"$CLUSTER_DIR"; } 2>/dev/null; then
        [ ! -d "$CLUSTER_DIR" ] ||  # else an empty one, just removed by the run that held it
            { echo "start.sh: cannot open $CLUSTER_DIR to lock it; nothing done" >&2; exit 1; }
    elif flock -n 9 &&
            [ "$(stat -L -c %d:%i "/proc/$$/fd/9")" = \
              "$(stat -c %d:%i "$CLUSTER_DIR" 2>/dev/null)" ]; then
        return 0
    fi
    # Locked by another run, or locked after the run that held it removed the empty
    # directory (which this run had opened just before).
    echo "start.sh: another start.sh is working on port $PORT; nothing done" >&2
    exit 1
}

CLUSTER_DIR=$TOP/$CLUSTERS/$PORT
CREATED=
if [ "$COMMAND" = stop ]; then
    [ -d "$CLUSTER_DIR" ] || { echo "start.sh: no cluster running on port $PORT"; exit 0; }
else
    mkdir -p "$TOP/$CLUSTERS"
    if mkdir "$CLUSTER_DIR" 2>/dev/null; then
        CREATED=yes
    elif [ ! -d "$CLUSTER_DIR" ]; then
        mkdir "$CLUSTER_DIR"  # says why it cannot
    fi
fi
# Physical, as /proc shows the processes' working directory (clusters/ may be a link).
CLUSTER_DIR=$(cd -P "$CLUSTER_DIR" && pwd -P)
lock_cluster
# A start refused before it wrote a file leaves no empty clusters/PORT/ behind;
# rmdir, under the lock, removes nothing else.
[ -z "$CREATED" ] || trap 'rmdir "$CLUSTER_DIR" 2>/dev/null || true' EXIT
"${COMMAND}_cluster"
