// kafkajs 2.2.4 never uses flexible protocol versions (ApiVersions <= 2, Metadata <= 6,
// Produce <= 7, CreateTopics <= 3, ListOffsets <= 3). Through Runnel: create a topic, produce
// keyed records (plain and gzip), and read the partition offsets back.
// Usage: node kafkajs_roundtrip.js BOOTSTRAP TOPIC COUNT   (prints a JSON summary on stdout)
const { Kafka, CompressionTypes, logLevel } = require('kafkajs');

async function main() {
  const [bootstrap, topic, countText] = process.argv.slice(2);
  const count = Number(countText);
  const kafka = new Kafka({ clientId: 'runnel-kafkajs', brokers: [bootstrap], logLevel: logLevel.ERROR });
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 3 }], waitForLeaders: true });
  const listed = await admin.listTopics();

  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  const half = Math.floor(count / 2);
  const batch = (from, to) =>
    Array.from({ length: to - from }, (_, i) => ({ key: `k${(from + i) % 7}`, value: `v${from + i}` }));
  const first = await producer.send({ topic, messages: batch(0, half) });
  const second = await producer.send({ topic, compression: CompressionTypes.GZIP, messages: batch(half, count) });
  await producer.disconnect();

  const offsets = await admin.fetchTopicOffsets(topic);
  await admin.disconnect();
  const total = offsets.reduce((sum, p) => sum + Number(p.high) - Number(p.low), 0);
  const errors = [...first, ...second].filter((r) => r.errorCode !== 0).length;
  console.log(JSON.stringify({ listed: listed.includes(topic), total, partitions: offsets.length, errors }));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
