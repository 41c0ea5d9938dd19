#!/bin/bash
# java with the image's jars and logging; KAFKA_HEAP_OPTS and KAFKA_OPTS as in Kafka's own scripts.
exec java ${KAFKA_HEAP_OPTS:--Xmx256m} ${KAFKA_OPTS:-} -Djava.awt.headless=true \
  "-Dlog4j.configuration=file:${KAFKA_LOG4J_CONFIG:-/opt/kafka/config/tools-log4j.properties}" \
  -cp '/opt/kafka/libs/*' "$@"
