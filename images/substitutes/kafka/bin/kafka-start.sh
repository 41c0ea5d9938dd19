#!/bin/bash
# The broker's start, with the official image's contract: every KAFKA_<NAME> variable is the
# setting <name> (lower case; "___" -> "-", "__" -> "_", "_" -> "."), except the JVM options
# below; CLUSTER_ID formats the log directories on the first start; then kafka.Kafka runs as PID 1.
# As a StatefulSet pod (hostname <set>-<ordinal>) it also knows who it is in the quorum: what
# the manifest leaves out is derived from the hostname, and what it gives must agree with it.
set -euo pipefail
config=/opt/kafka/config/server.properties
jvm_only=" KAFKA_HEAP_OPTS KAFKA_OPTS KAFKA_JVM_PERFORMANCE_OPTS KAFKA_LOG4J_CONFIG "

fail() { echo "kafka-start: $*" >&2; exit 2; }

host=${HOSTNAME:-$(hostname)}
ordinal= set_name= fqdn=
if [[ $host =~ ^(.+)-([0-9]+)$ ]]; then
  set_name=${BASH_REMATCH[1]} ordinal=$((10#${BASH_REMATCH[2]}))
fi
# kubelet writes "<ip> <pod>.<headless service>.<namespace>.svc.<domain> <pod>" into /etc/hosts.
fqdn=$(awk -v h="$host" '{ for (i = 2; i <= NF; i++) if (index($i, h ".") == 1) { print $i; exit } }' /etc/hosts)
controller_port=9093
[[ ${KAFKA_LISTENERS:-} =~ CONTROLLER://[^,]*:([0-9]+) ]] && controller_port=${BASH_REMATCH[1]}

# node.id is the ordinal: kafka-N is voter N, and keeps its id (and its volume) when it restarts.
if [[ -z ${KAFKA_NODE_ID:-} ]]; then
  [[ -n $ordinal ]] || fail "no KAFKA_NODE_ID, and hostname $host carries no ordinal"
  export KAFKA_NODE_ID=$ordinal
elif [[ -n $ordinal && $KAFKA_NODE_ID != "$ordinal" ]]; then
  fail "KAFKA_NODE_ID=$KAFKA_NODE_ID, but this is pod $host (ordinal $ordinal)"
fi

# The voters: one per pod of the set, by its name under the same headless Service
# (QUORUM_SIZE of them), unless given or the quorum is dynamic (bootstrap servers).
if [[ -z ${KAFKA_CONTROLLER_QUORUM_VOTERS:-} && -z ${KAFKA_CONTROLLER_QUORUM_BOOTSTRAP_SERVERS:-} ]]; then
  [[ -n ${QUORUM_SIZE:-} && -n $fqdn && -n $set_name ]] \
    || fail "no KAFKA_CONTROLLER_QUORUM_VOTERS: set it, or QUORUM_SIZE in a StatefulSet pod with a headless Service"
  domain=${fqdn#"$host".} voters=
  for ((i = 0; i < QUORUM_SIZE; i++)); do
    voters+=${voters:+,}$i@$set_name-$i.$domain:$controller_port
  done
  export KAFKA_CONTROLLER_QUORUM_VOTERS=$voters
fi
# A controller must be the voter of its own id, at its own name: another pod's entry would
# make two nodes vote as one.
if [[ ${KAFKA_PROCESS_ROLES:-} == *controller* && -n ${KAFKA_CONTROLLER_QUORUM_VOTERS:-} ]]; then
  entry=$(tr ',' '\n' <<< "$KAFKA_CONTROLLER_QUORUM_VOTERS" | grep "^$KAFKA_NODE_ID@" || true)
  [[ -n $entry ]] || fail "node.id $KAFKA_NODE_ID is not among the voters $KAFKA_CONTROLLER_QUORUM_VOTERS"
  voter_host=${entry#*@}
  voter_host=${voter_host%:*}
  if [[ -n $fqdn && ! $voter_host =~ ^($fqdn|$host|localhost|127\.0\.0\.1)$ ]]; then
    fail "voter $entry is not this pod ($fqdn)"
  fi
fi

# Clients reach each broker by its own stable name.
if [[ -z ${KAFKA_ADVERTISED_LISTENERS:-} && -n $fqdn ]]; then
  export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://$fqdn:9092
fi
echo "kafka-start: $host is node.id $KAFKA_NODE_ID; voters ${KAFKA_CONTROLLER_QUORUM_VOTERS:-dynamic}"

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
