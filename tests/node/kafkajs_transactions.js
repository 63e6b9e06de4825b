// kafkajs transactional producer against Runnel: one committed and one aborted transaction.
// Usage: node kafkajs_transactions.js BOOTSTRAP TOPIC TRANSACTIONAL_ID
// Prints one JSON line; the Python test checks the topic with read_committed/read_uncommitted.
const { Kafka, logLevel } = require("kafkajs");

async function main() {
  const [bootstrap, topic, transactionalId] = process.argv.slice(2);
  const kafka = new Kafka({ clientId: "runnel-kafkajs-txn", brokers: [bootstrap], logLevel: logLevel.ERROR });
  const producer = kafka.producer({ transactionalId, idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const committed = await producer.transaction();
  await committed.send({ topic, messages: [{ value: "js-kept-1" }, { value: "js-kept-2" }] });
  await committed.commit();
  const aborted = await producer.transaction();
  await aborted.send({ topic, messages: [{ value: "js-dropped" }] });
  await aborted.abort();
  await producer.disconnect();
  console.log(JSON.stringify({ ok: true }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
