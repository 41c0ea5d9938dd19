"""The small runtime the purchase functions stand on: one place for each fact.

config (every setting, read once), schema, events, storage, logs; and the plumbing each
function would otherwise rebuild: answers (JSON errors, 503 + Retry-After), probes
(/healthz, /readyz, /metrics), retry (backoff), producer (buy's Kafka producer, librdkafka
on asyncio) and batch_consumer (persist-purchase's Kafka side). producer needs the
``producer`` extra, batch_consumer the ``kafka`` one, answers the ``http`` one; history's
image installs neither Kafka client.
"""
