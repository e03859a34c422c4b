#!/usr/bin/env bash
# Kafka's own CLI tools, from the same jars as the local broker (fetched on first use):
#   ./scripts/kafka.sh consumer-groups --describe --group payment
#   ./scripts/kafka.sh topics --describe --topic orders
#   ./scripts/kafka.sh producer-perf --topic perf --num-records 100000 --record-size 200 --throughput -1 --producer-props acks=all
# --bootstrap-server defaults to the local broker ($ORDERFLOW_KAFKA_BOOTSTRAP, else
# 127.0.0.1:$ORDERFLOW_KAFKA_PORT). `./scripts/kafka.sh` alone lists the tools.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

declare -A TOOLS=(
    [topics]=org.apache.kafka.tools.TopicCommand
    [consumer-groups]=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
    [producer-perf]=org.apache.kafka.tools.ProducerPerformance
    [consumer-perf]=org.apache.kafka.tools.ConsumerPerformance
    [verifiable-producer]=org.apache.kafka.tools.VerifiableProducer
    [verifiable-consumer]=org.apache.kafka.tools.VerifiableConsumer
    [console-consumer]=org.apache.kafka.tools.consumer.ConsoleConsumer
    [console-producer]=org.apache.kafka.tools.ConsoleProducer
    [get-offsets]=org.apache.kafka.tools.GetOffsetShell
    [api-versions]=org.apache.kafka.tools.BrokerApiVersionsCommand
    [configs]=kafka.admin.ConfigCommand
    [metadata-quorum]=org.apache.kafka.tools.MetadataQuorumCommand
    [storage]=kafka.tools.StorageTool
)

tool="${1:-}"
if [ -z "$tool" ] || [ -z "${TOOLS[$tool]:-}" ]; then
    [ -n "$tool" ] && printf 'unknown tool %q\n' "$tool" >&2
    echo "usage: $0 TOOL [ARGS...]   tools: $(printf '%s\n' "${!TOOLS[@]}" | sort | tr '\n' ' ')" >&2
    exit 2
fi
shift
ensure_kafka
args=("$@")
# Every tool but storage talks to a broker: the local one unless told otherwise.
if [ "$tool" != storage ] && [[ " $* " != *" --bootstrap-server "* && " $* " != *" --bootstrap-servers "* && " $* " != *" --broker-list "* ]]; then
    case "$tool" in
        producer-perf) args+=(--bootstrap-server "${ORDERFLOW_KAFKA_BOOTSTRAP:-127.0.0.1:$ORDERFLOW_KAFKA_PORT}") ;;
        verifiable-producer | verifiable-consumer) args+=(--bootstrap-server "${ORDERFLOW_KAFKA_BOOTSTRAP:-127.0.0.1:$ORDERFLOW_KAFKA_PORT}") ;;
        *) args=(--bootstrap-server "${ORDERFLOW_KAFKA_BOOTSTRAP:-127.0.0.1:$ORDERFLOW_KAFKA_PORT}" "${args[@]}") ;;
    esac
fi
ORDERFLOW_KAFKA_LOG_LEVEL="${ORDERFLOW_KAFKA_LOG_LEVEL:-WARN}" kafka_java "${TOOLS[$tool]}" "${args[@]}"
