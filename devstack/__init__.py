"""The local stack: real Apache Kafka (KRaft) and FerretDB on 127.0.0.1, plus the functions."""
