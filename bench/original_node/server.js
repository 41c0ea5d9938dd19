// The baseline of `make bench-versus` (bench/versus.py, issue 12): a stand-in for the original
// TypeScript buy service that functions/buy replaces, written for this benchmark in plain
// JavaScript so it runs without a compile step. Its request path is the original's shape:
// Express + kafkajs, POST /api/buy takes the JSON body as it is (no validation), produces one
// record (key = userId, value = the JSON) with acks = -1 (all) and answers
// 202 {"message", "id"} only after the broker acknowledged it.
//
//   PORT=8099 KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 PURCHASES_TOPIC=purchases node server.js
//
// Dependencies come from NODE_PATH (bench/versus.py installs package-lock.json with `npm ci`
// into the cache outside the clone), so the clone holds no node_modules.
'use strict';

const crypto = require('node:crypto');
const express = require('express');
const { Kafka, Partitioners, logLevel } = require('kafkajs');

const port = Number.parseInt(process.env.PORT || '', 10);
if (!Number.isInteger(port) || port <= 0) {
  console.error('PORT must name the port to listen on');
  process.exit(2);
}
const host = process.env.HOST || '127.0.0.1';
const brokers = (process.env.KAFKA_BOOTSTRAP_SERVERS || '127.0.0.1:9092').split(',');
const topic = process.env.PURCHASES_TOPIC || 'purchases';

const kafka = new Kafka({ clientId: 'original-buy', brokers, logLevel: logLevel.WARN });
// The Java client's partitioner (murmur2 of the key), as kafka-python's: the same user lands
// on the same partition whichever service produced the purchase.
const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });

const app = express();
app.use(express.json());

app.post('/api/buy', async (req, res) => {
  const purchase = req.body;
  const id = crypto.randomUUID();
  const key = purchase && purchase.userId != null ? String(purchase.userId) : null;
  try {
    await producer.send({ topic, acks: -1, messages: [{ key, value: JSON.stringify(purchase) }] });
    res.status(202).json({ message: 'Purchase accepted', id });
  } catch (err) {
    res.status(503).json({ error: `not accepted: ${err.message}` });
  }
});

async function main() {
  await producer.connect();
  const server = app.listen(port, host, () => console.log(`original buy on http://${host}:${port}`));
  const stop = () => {
    // Bounded: whatever is still open after 5 s is dropped.
    setTimeout(() => process.exit(0), 5000).unref();
    server.close();
    producer.disconnect().finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
