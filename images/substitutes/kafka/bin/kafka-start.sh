#!/bin/bash
# The broker's start, with the official image's contract: every KAFKA_<NAME> variable is the
# setting <name> (lower case; "___" -> "-", "__" -> "_", "_" -> "."), except the JVM options
# below; CLUSTER_ID formats the log directories on the first start; then kafka.Kafka runs as PID 1.
set -euo pipefail
config=/opt/kafka/config/server.properties
jvm_only=" KAFKA_HEAP_OPTS KAFKA_OPTS KAFKA_JVM_PERFORMANCE_OPTS KAFKA_LOG4J_CONFIG "

: > "$config"
for name in $(compgen -e | sort); do
  [[ $name == KAFKA_* && $jvm_only != *" $name "* ]] || continue
  key=${name#KAFKA_}
  key=${key,,}
  key=${key//___/-}
  key=${key//__/@}
  key=${key//_/.}
  key=${key//@/_}
  printf '%s=%s\n' "$key" "${!name}" >> "$config"
done

# Same as devstack: StorageTool format, here idempotent (--ignore-formatted) so a restarted pod
# keeps its volume. Without CLUSTER_ID a random one is used, as Kafka's quickstart does.
cluster_id=${CLUSTER_ID:-$(KAFKA_HEAP_OPTS=-Xmx128m /opt/kafka/bin/kafka-storage.sh random-uuid)}
KAFKA_HEAP_OPTS=-Xmx256m /opt/kafka/bin/kafka-storage.sh format --ignore-formatted \
  --cluster-id "$cluster_id" --config "$config"

export KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}
export KAFKA_OPTS="-XX:+UseG1GC ${KAFKA_OPTS:-}"
export KAFKA_LOG4J_CONFIG=${KAFKA_LOG4J_CONFIG:-/opt/kafka/config/log4j.properties}
exec /opt/kafka/bin/kafka-run-class.sh kafka.Kafka "$config"
