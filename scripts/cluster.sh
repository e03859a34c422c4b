#!/usr/bin/env bash
# A three-node Apache Kafka cluster on this machine, for trying failover by hand: KRaft, each
# node a broker and a controller of one quorum, the repository's broker settings
# (ops/kafka/server.properties) with production's replication (3, min.insync.replicas=2).
# Brokers on 127.0.0.1:$ORDERFLOW_CLUSTER_PORT.. +2 (49092-49094), controllers on +100;
# data and logs under $ORDERFLOW_CLUSTER_DIR (/var/tmp/orderflow-cluster). The failover tests
# start clusters of their own (tests/src/broker.rs); this one is for people.
#   ./scripts/cluster.sh start            format on first use; start the nodes not running
#   ./scripts/cluster.sh status           each node's pid, and the quorum as Kafka reports it
#   ./scripts/cluster.sh kill N           SIGKILL node N (a crash)   | stop N: SIGTERM (clean)
#   ./scripts/cluster.sh freeze N         SIGSTOP node N (a hung broker) | thaw N: SIGCONT
#   ./scripts/cluster.sh stop             every node, cleanly
#   ./scripts/cluster.sh wipe             stop, then delete the data
# Point the stack at it: ORDERFLOW_KAFKA_BOOTSTRAP=127.0.0.1:49092,127.0.0.1:49093,127.0.0.1:49094
# and ORDERFLOW_KAFKA_REPLICATION_FACTOR=3.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${ORDERFLOW_CLUSTER_PORT:-49092}"
DIR="${ORDERFLOW_CLUSTER_DIR:-/var/tmp/orderflow-cluster}"
NODES=(1 2 3)
BOOTSTRAP="127.0.0.1:$PORT,127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))"

broker_port() { echo $((PORT + $1 - 1)); }
controller_port() { echo $((PORT + 100 + $1 - 1)); }
pid_of() { cat "$DIR/node-$1/pid" 2>/dev/null || true; }
# Alive: the pid exists and is not a zombie waiting for its parent.
running() {
    local pid state
    pid="$(pid_of "$1")"
    [ -n "$pid" ] && state="$(ps -o stat= -p "$pid" 2>/dev/null)" && [ -n "$state" ] && [[ "$state" != Z* ]]
}
check_node() { [[ " ${NODES[*]} " == *" ${1:-} "* ]] || die "no node '${1:-}' (nodes: ${NODES[*]})"; }

format_node() {
    local n="$1" dir="$DIR/node-$1" voters="" m
    for m in "${NODES[@]}"; do voters+="${voters:+,}$m@127.0.0.1:$(controller_port "$m")"; done
    mkdir -p "$dir"
    {
        cat "$ORDERFLOW_KAFKA_CONFIG_DIR/server.properties"
        printf '\n# Node %s of the three-node cluster (scripts/cluster.sh); later keys win.\n' "$n"
        printf 'node.id=%s\nlisteners=PLAINTEXT://127.0.0.1:%s,CONTROLLER://127.0.0.1:%s\n' "$n" "$(broker_port "$n")" "$(controller_port "$n")"
        printf 'advertised.listeners=PLAINTEXT://127.0.0.1:%s\ncontroller.quorum.voters=%s\nlog.dirs=%s\n' \
            "$(broker_port "$n")" "$voters" "$dir/data"
        printf 'offsets.topic.replication.factor=3\ntransaction.state.log.replication.factor=3\n'
        printf 'transaction.state.log.min.isr=2\nshare.coordinator.state.topic.replication.factor=3\n'
        printf 'share.coordinator.state.topic.min.isr=2\ndefault.replication.factor=3\nmin.insync.replicas=2\n'
    } >"$dir/server.properties"
    [ -s "$dir/data/meta.properties" ] && return
    kafka_java kafka.tools.StorageTool format -t "$(cat "$DIR/cluster.id")" -c "$dir/server.properties" \
        >"$dir/format.log" 2>&1 || { tail -20 "$dir/format.log" >&2; die "formatting node $n failed"; }
}

start_node() {
    local n="$1" dir="$DIR/node-$1"
    running "$n" && { log "node $n already runs (pid $(pid_of "$n"))"; return; }
    port_open "$(broker_port "$n")" && die "port $(broker_port "$n") is taken; set ORDERFLOW_CLUSTER_PORT"
    format_node "$n"
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    log "starting node $n on 127.0.0.1:$(broker_port "$n") (log: $dir/broker.log)"
    # shellcheck disable=SC2086 # the heap options are words
    (exec setsid nohup "$ORDERFLOW_JAVA" ${ORDERFLOW_CLUSTER_HEAP:--Xms128m -Xmx512m} -XX:+UseG1GC \
        -Dlog4j2.configurationFile="$ORDERFLOW_KAFKA_CONFIG_DIR/log4j2.properties" -cp "$ORDERFLOW_KAFKA_LIBS/*" \
        kafka.Kafka "$dir/server.properties") >>"$dir/broker.log" 2>&1 &
    echo "$!" >"$dir/pid"
}

quorum() {
    ORDERFLOW_KAFKA_LOG_LEVEL=ERROR kafka_java org.apache.kafka.tools.MetadataQuorumCommand \
        --bootstrap-server "$BOOTSTRAP" describe --status 2>/dev/null
}

signal_node() {
    check_node "$2"
    running "$2" || die "node $2 is not running"
    kill "-$1" "$(pid_of "$2")"
    log "node $2: SIG$1"
}

case "${1:-}" in
    start)
        ensure_kafka
        mkdir -p "$DIR"
        [ -s "$DIR/cluster.id" ] || kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null >"$DIR/cluster.id"
        for n in "${NODES[@]}"; do start_node "$n"; done
        for ((i = 0; i < 120; i++)); do
            if status="$(quorum)" && [[ "$status" == *"CurrentVoters"* ]] && [[ "$status" == *"LeaderId"* ]]; then
                log "the cluster answers on $BOOTSTRAP"
                printf '%s\n' "$status" | grep -E 'LeaderId|CurrentVoters'
                exit 0
            fi
            sleep 1
        done
        die "the cluster did not answer within 120 s (logs: $DIR/node-*/broker.log)"
        ;;
    status)
        ensure_kafka
        for n in "${NODES[@]}"; do
            if running "$n"; then echo "node $n: pid $(pid_of "$n"), broker 127.0.0.1:$(broker_port "$n")"; else echo "node $n: not running"; fi
        done
        quorum || echo "the quorum does not answer"
        ;;
    kill) signal_node KILL "${2:-}" ;;
    freeze) signal_node STOP "${2:-}" ;;
    thaw) signal_node CONT "${2:-}" ;;
    stop | wipe)
        targets=("${NODES[@]}")
        [ "$1" = stop ] && [ -n "${2:-}" ] && { check_node "$2"; targets=("$2"); }
        # All at once: the last node of a quorum cannot shut down cleanly once the others left.
        for n in "${targets[@]}"; do
            running "$n" || continue
            kill -CONT "$(pid_of "$n")" 2>/dev/null || true
            kill -TERM "$(pid_of "$n")"
        done
        for n in "${targets[@]}"; do
            i=0
            while running "$n" && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
            # The quorum's last node cannot finish a controlled shutdown alone (nobody left to
            # acknowledge it); Kafka's own system tests kill such a node too. Its log is flushed.
            if running "$n"; then
                log "node $n did not finish its controlled shutdown in 30 s (the quorum's last node cannot): SIGKILL"
                kill -KILL "$(pid_of "$n")"
                i=0
                while running "$n" && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
            fi
            running "$n" || log "node $n stopped"

        done
        if [ "$1" = wipe ]; then rm -rf "$DIR"; log "removed $DIR"; fi
        ;;
    *)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
