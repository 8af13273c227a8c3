#!/bin/sh
# Start a local cluster: a master and N workers, in the background.
#
#   sh start.sh [WORKERS [PORT]]   start (default: 2 workers, master on 6000)
#   sh start.sh stop [PORT]        shut the cluster down cleanly
#
# Workers listen on PORT+1 ... PORT+N. Logs and pid files go to log/.
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
LOG_DIR=log
# How long to wait for a process to listen, or to exit, in tenths of a second.
WAIT_TENTHS=100

listening() {  # PORT: true if something accepts TCP connections there
    "$PYTHON" -c "import socket,sys; socket.create_connection(('localhost', int(sys.argv[1])), 1).close()" "$1" 2>/dev/null
}

wait_listening() {  # PORT PID NAME
    tries=0
    until listening "$1"; do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "start.sh: $3 exited; see $LOG_DIR/$3.log" >&2; exit 1
        fi
        tries=$((tries + 1))
        if [ "$tries" -gt "$WAIT_TENTHS" ]; then
            echo "start.sh: $3 is not listening on $1 after 10 s" >&2; exit 1
        fi
        sleep 0.1
    done
}

wait_exit() {  # PID: wait until the process is gone (or give up after 10 s)
    tries=0
    while kill -0 "$1" 2>/dev/null && [ "$tries" -lt "$WAIT_TENTHS" ]; do
        tries=$((tries + 1)); sleep 0.1
    done
    ! kill -0 "$1" 2>/dev/null
}

stop() {
    port=${1:-6000}
    "$PYTHON" send_job.py "$port" --shutdown 2>/dev/null || true
    for pidfile in "$LOG_DIR"/*.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if ! wait_exit "$pid"; then
            echo "start.sh: $(basename "$pidfile" .pid) ($pid) did not exit; killing it" >&2
            kill "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    echo "cluster on port $port stopped"
}

start() {
    workers=${1:-2}
    port=${2:-6000}
    mkdir -p "$LOG_DIR"
    if listening "$port"; then
        echo "start.sh: port $port is already in use (a cluster running? sh start.sh stop)" >&2
        exit 1
    fi
    "$PYTHON" master.py "$port" > "$LOG_DIR/master.log" 2>&1 &
    echo $! > "$LOG_DIR/master.pid"
    wait_listening "$port" "$!" master
    n=1
    while [ "$n" -le "$workers" ]; do
        wport=$((port + n))
        "$PYTHON" worker.py "$port" "$wport" > "$LOG_DIR/worker-$wport.log" 2>&1 &
        echo $! > "$LOG_DIR/worker-$wport.pid"
        wait_listening "$wport" "$!" "worker-$wport"
        n=$((n + 1))
    done
    echo "master on port $port with $workers worker(s) on ports $((port + 1))-$((port + workers))"
    echo "submit: python3 send_job.py $port --wait    stop: sh start.sh stop $port    logs: $LOG_DIR/"
}

case "${1:-}" in
    stop) stop "${2:-6000}" ;;
    *) start "${1:-2}" "${2:-6000}" ;;
esac
