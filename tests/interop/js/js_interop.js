#!/usr/bin/env node
// Interop of eventwire with the official CloudEvents SDK for JavaScript (npm `cloudevents` 10)
// over kafkajs, amqplib and ioredis, run by tests/interop/test_js_interop.c.
//
//   js_interop.js capture
//       Prints, one JSON line each, the messages the SDK makes for one event with an extension
//       (tenantid) and a dataschema naming version 2, and for a plain SDK event: Kafka binary,
//       Kafka structured, and AMQP binary mapped by the AMQP binding's rules (the SDK has no AMQP
//       binding). Headers are as kafkajs/amqplib put them on the wire.
//   js_interop.js kafka-read | amqp-read
//       Reads messages eventwire made (one JSON line each: {"headers":{...},"value":"..."}, for
//       AMQP also "content_type") from standard input and prints what the SDK makes of them.
//   js_interop.js kafka-produce BOOTSTRAP TOPIC MODE ID SUBJECT [plain]
//   js_interop.js kafka-consume BOOTSTRAP TOPIC N
//   js_interop.js amqp-publish URL EXCHANGE MODE ID SUBJECT [plain]
//   js_interop.js amqp-consume URL EXCHANGE N          (prints "ready" once its queue is bound)
//   js_interop.js redis-publish URL STREAM ID SUBJECT [plain]
//   js_interop.js redis-consume URL STREAM N
// MODE is structured or binary. "plain" makes a plain SDK event: no dataschema, no extension.
// The consumers turn each message back into an SDK CloudEvent (which validates it) and print
// one JSON line per event: {"mode":..., "event":{every attribute and data}}.
//
// Exit status 0 when everything worked; 77 when the npm packages are not installed; 1 with
// the reason on stderr otherwise.
"use strict";

let CloudEvent, Kafka;
try {
  ({ CloudEvent, Kafka } = require("cloudevents"));
} catch (e) {
  console.error("js_interop: the npm packages are missing (scripts/setup installs them)");
  process.exit(77);
}

const TIMEOUT_MS = 60000;

function fail(msg) {
  console.error("js_interop: " + msg);
  process.exit(1);
}

// The event a JavaScript service of the system would publish: user.registered of version 2,
// without eventversion (which is eventwire's own extension), with a tenant extension and a
// dataschema that names the version; or a plain one with neither.
function makeEvent(id, subject, plain) {
  const attrs = {
    id,
    type: "user.registered",
    source: "/js/service",
    subject,
    datacontenttype: "application/json",
    data: { user_id: subject, email: "js@example.com", username: "js", roles: ["user", "admin"] },
  };
  if (!plain) {
    attrs.dataschema = "https://schemas.example.com/user.registered/v2.json";
    attrs.tenantid = "acme";
  }
  return new CloudEvent(attrs);
}

// The SDK's Kafka message as kafkajs sends it: header values as strings, the value as text.
function forKafkajs(m) {
  const headers = {};
  for (const [k, v] of Object.entries(m.headers)) if (v !== undefined) headers[k] = String(v);
  const value = typeof m.value === "string" ? m.value : JSON.stringify(m.value);
  return { key: m.key === undefined ? null : m.key, value, headers };
}

// AMQP binary mode by the binding's rules: cloudEvents_ application properties (native AMQP types
// for numbers and booleans), datacontenttype as the content type, the data as the body.
function amqpBinary(ev) {
  const headers = {};
  for (const [k, v] of Object.entries(ev.toJSON())) {
    if (v === undefined || k === "data" || k === "data_base64" || k === "datacontenttype") continue;
    headers["cloudEvents_" + k] = v;
  }
  return {
    headers,
    contentType: ev.datacontenttype || "application/json",
    body: Buffer.from(JSON.stringify(ev.data)),
  };
}

function amqpStructured(ev) {
  return {
    headers: {},
    contentType: "application/cloudevents+json; charset=utf-8",
    body: Buffer.from(JSON.stringify(ev.toJSON())),
  };
}

function capture() {
  const subject = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
  for (const plain of [false, true]) {
    const ev = makeEvent(plain ? "js-plain-1" : "js-ext-1", subject, plain);
    const tag = plain ? "-plain" : "";
    for (const [mode, fn] of [["binary", Kafka.binary], ["structured", Kafka.structured]]) {
      const m = forKafkajs(fn(ev));
      console.log(JSON.stringify({ name: `kafka-${mode}${tag}`, headers: Object.entries(m.headers), value: m.value }));
    }
    const a = amqpBinary(ev);
    const props = Object.entries(a.headers).map(([k, v]) => [k, Number.isInteger(v) ? "int" : typeof v === "boolean" ? "bool" : "string", String(v)]);
    console.log(JSON.stringify({ name: `amqp-binary${tag}`, content_type: a.contentType, props, value: a.body.toString() }));
  }
}

// Prints an event an SDK consumer got; the SDK has validated it on the way.
function report(mode, ev) {
  console.log(JSON.stringify({ mode, event: ev.toJSON() }));
}

function deadline(what) {
  return setTimeout(() => fail(`${what}: nothing within ${TIMEOUT_MS / 1000} s`), TIMEOUT_MS);
}

// ---- Kafka -------------------------------------------------------------------------------------

function kafkaClient(bootstrap) {
  const { Kafka: KafkaJS, logLevel } = require("kafkajs");
  return new KafkaJS({ clientId: "js-interop", brokers: bootstrap.split(","), logLevel: logLevel.NOTHING });
}

async function kafkaProduce(bootstrap, topic, mode, id, subject, plain) {
  const ev = makeEvent(id, subject, plain);
  const m = forKafkajs(mode === "binary" ? Kafka.binary(ev) : Kafka.structured(ev));
  m.key = subject;
  const producer = kafkaClient(bootstrap).producer({ allowAutoTopicCreation: true });
  await producer.connect();
  await producer.send({ topic, acks: -1, messages: [m] });
  await producer.disconnect();
  console.log(`produced ${id}`);
}

async function kafkaConsume(bootstrap, topic, n) {
  const timer = deadline("kafka-consume");
  const consumer = kafkaClient(bootstrap).consumer({ groupId: `js-interop-${process.pid}-${Date.now()}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let seen = 0;
  await new Promise((resolve, reject) => {
    consumer.run({
      eachMessage: async ({ message }) => {
        // kafkajs hands header values as Buffers; the SDK reads strings
        const headers = {};
        for (const [k, v] of Object.entries(message.headers || {})) headers[k] = Buffer.isBuffer(v) ? v.toString() : String(v);
        const msg = { key: message.key ? message.key.toString() : undefined, value: message.value.toString(), headers };
        if (!Kafka.isEvent(msg)) return reject(new Error(`not a CloudEvent: ${JSON.stringify(headers)}`));
        const ct = headers["content-type"] || "";
        const ev = Kafka.toEvent(msg);
        report(ct.startsWith("application/cloudevents") ? "structured" : "binary", ev);
        if (++seen === n) resolve();
      },
    }).catch(reject);
  }).catch((e) => fail(`kafka-consume: ${e.message}`));
  clearTimeout(timer);
  await consumer.disconnect();
}

// ---- RabbitMQ ----------------------------------------------------------------------------------

async function amqpPublish(url, exchange, mode, id, subject, plain) {
  const amqp = require("amqplib");
  const ev = makeEvent(id, subject, plain);
  const m = mode === "binary" ? amqpBinary(ev) : amqpStructured(ev);
  const conn = await amqp.connect(url);
  const ch = await conn.createConfirmChannel();
  await new Promise((resolve, reject) =>
    ch.publish(exchange, ev.type, m.body, { contentType: m.contentType, headers: m.headers, persistent: true, messageId: id },
      (err) => (err ? reject(err) : resolve())));
  await ch.close();
  await conn.close();
  console.log(`published ${id}`);
}

// An AMQP message back into an SDK event, by the binding's rules.
function fromAmqp(msg) {
  const ct = msg.properties.contentType || "";
  if (ct.startsWith("application/cloudevents")) return ["structured", new CloudEvent(JSON.parse(msg.content.toString()))];
  const attrs = {};
  for (const [k, v] of Object.entries(msg.properties.headers || {})) {
    for (const p of ["cloudEvents_", "cloudEvents:"]) if (k.startsWith(p)) attrs[k.slice(p.length)] = v;
  }
  if (!attrs.specversion) throw new Error(`neither mode: content type ${ct}, headers ${JSON.stringify(msg.properties.headers)}`);
  if (ct) attrs.datacontenttype = ct;
  attrs.data = JSON.parse(msg.content.toString());
  return ["binary", new CloudEvent(attrs)];
}

async function amqpConsume(url, exchange, n) {
  const amqp = require("amqplib");
  const timer = deadline("amqp-consume");
  const conn = await amqp.connect(url);
  const ch = await conn.createChannel();
  const q = await ch.assertQueue("", { exclusive: true });
  await ch.bindQueue(q.queue, exchange, "#");
  console.log("ready");
  let seen = 0;
  await new Promise((resolve, reject) => {
    ch.consume(q.queue, (msg) => {
      try {
        const [mode, ev] = fromAmqp(msg);
        report(mode, ev);
      } catch (e) {
        return reject(e);
      }
      ch.ack(msg);
      if (++seen === n) resolve();
    });
  }).catch((e) => fail(`amqp-consume: ${e.message}`));
  clearTimeout(timer);
  await conn.close();
}

// ---- Redis -------------------------------------------------------------------------------------

async function redisPublish(url, stream, id, subject, plain) {
  const Redis = require("ioredis");
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await r.connect();
  await r.xadd(stream, "*", "event", JSON.stringify(makeEvent(id, subject, plain).toJSON()));
  r.disconnect();
  console.log(`published ${id}`);
}

async function redisConsume(url, stream, n) {
  const Redis = require("ioredis");
  const timer = deadline("redis-consume");
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await r.connect();
  let last = "0", seen = 0;
  while (seen < n) {
    const res = await r.xread("BLOCK", 1000, "STREAMS", stream, last);
    for (const [, entries] of res || []) {
      for (const [eid, fields] of entries) {
        last = eid;
        const i = fields.indexOf("event");
        if (i < 0 || i % 2) fail(`entry ${eid} has no event field`);
        report("structured", new CloudEvent(JSON.parse(fields[i + 1])));
        seen++;
      }
    }
  }
  clearTimeout(timer);
  r.disconnect();
}

// ---- messages from standard input ----------------------------------------------------------------

async function readStdin(binding) {
  let text = "";
  for await (const chunk of process.stdin) text += chunk;
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const m = JSON.parse(line);
    if (binding === "kafka") {
      if (!Kafka.isEvent(m)) fail(`not a CloudEvent: ${line}`);
      const ct = m.headers["content-type"] || "";
      report(ct.startsWith("application/cloudevents") ? "structured" : "binary", Kafka.toEvent(m));
    } else {
      const [mode, ev] = fromAmqp({ properties: { contentType: m.content_type, headers: m.headers }, content: Buffer.from(m.value) });
      report(mode, ev);
    }
  }
}

// ---- main --------------------------------------------------------------------------------------

async function main(argv) {
  const [cmd, ...a] = argv;
  const plain = a[a.length - 1] === "plain";
  switch (cmd) {
    case "capture": return capture();
    case "kafka-read": return readStdin("kafka");
    case "amqp-read": return readStdin("amqp");
    case "kafka-produce": return kafkaProduce(a[0], a[1], a[2], a[3], a[4], plain);
    case "kafka-consume": return kafkaConsume(a[0], a[1], Number(a[2]));
    case "amqp-publish": return amqpPublish(a[0], a[1], a[2], a[3], a[4], plain);
    case "amqp-consume": return amqpConsume(a[0], a[1], Number(a[2]));
    case "redis-publish": return redisPublish(a[0], a[1], a[2], a[3], plain);
    case "redis-consume": return redisConsume(a[0], a[1], Number(a[2]));
    default: fail(`unknown command ${cmd}`);
  }
}

main(process.argv.slice(2)).then(() => process.exit(0), (e) => fail(e.stack || String(e)));
