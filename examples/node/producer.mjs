// Enqueue a job for a Python jsqueue worker, following docs/protocol.md and nothing else:
// a v1 JSON envelope, published with JetStream to <prefix>.q.<queue> with Nats-Msg-Id set to
// the job id; a delayed job goes to <prefix>.sched.<queue>.<id> with the schedule headers.
//
//   node producer.mjs add '[2, 3]'
//   node producer.mjs greet '["Ada"]' --kwargs '{"greeting": "Hi"}' --delay 1.5 --id greet-ada
//
// Prints one JSON line: {"id", "subject", "eta"}. JSQUEUE_URL and JSQ_PREFIX say where.
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { connect, headers } from "nats";
import { connectOptions, prefix } from "./options.mjs";

const JOB_ID = /^[-/_=A-Za-z0-9]+(\.[-/_=A-Za-z0-9]+)*$/;

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    kwargs: { type: "string", default: "{}" },
    queue: { type: "string", default: "default" },
    id: { type: "string" },
    delay: { type: "string" }, // seconds from now
    expires: { type: "string" }, // seconds from now
  },
});
const [task, argsJson = "[]"] = positionals;
if (!task) {
  console.error("usage: node producer.mjs TASK [ARGS_JSON] [--kwargs JSON] [--delay S] [--id ID]");
  process.exit(2);
}

const id = opts.id ?? randomUUID(); // a UUID uses only legal characters
if (id.length > 200 || !JOB_ID.test(id)) {
  console.error(`illegal job id ${JSON.stringify(id)}: 1-200 of A-Z a-z 0-9 - _ / = and '.'`);
  process.exit(2);
}
const now = Date.now() / 1000; // every time on the wire is Unix seconds
const envelope = {
  v: 1,
  id,
  task,
  queue: opts.queue,
  args: JSON.parse(argsJson),
  kwargs: JSON.parse(opts.kwargs),
  created: now,
};
if (opts.expires !== undefined) envelope.expires = now + Number(opts.expires);

const hdrs = headers();
hdrs.set("Nats-Msg-Id", id); // the server drops a second publish of this id (duplicate window)
let subject = `${prefix}.q.${opts.queue}`;
if (opts.delay !== undefined && Number(opts.delay) > 0) {
  envelope.eta = now + Number(opts.delay);
  // RFC 3339 in UTC with milliseconds, rounded up so the job never fires before its eta.
  const at = new Date(Math.ceil(envelope.eta * 1000)).toISOString();
  hdrs.set("Nats-Schedule", `@at ${at}`);
  hdrs.set("Nats-Schedule-Target", subject);
  subject = `${prefix}.sched.${opts.queue}.${id}`;
}

const nc = await connect(connectOptions("jsqueue-node-producer"));
try {
  const js = nc.jetstream();
  const data = new TextEncoder().encode(JSON.stringify(envelope));
  const ack = await js.publish(subject, data, { headers: hdrs });
  console.log(JSON.stringify({ id, subject, eta: envelope.eta ?? null, duplicate: ack.duplicate }));
} catch (err) {
  // "503" / no responders: the jobs stream does not exist yet (start a worker once).
  console.error(`publish to ${subject} failed: ${err.message}`);
  process.exitCode = 1;
} finally {
  await nc.close();
}
