// Read a jsqueue job's result record from the KV bucket <prefix>_results (docs/protocol.md):
// key = job id, value = JSON with "state". No key means PENDING. By default it waits (a KV
// watch, not polling) until the state is final: SUCCESS, FAILURE, DEAD, EXPIRED or REVOKED.
//
//   node results.mjs JOB_ID [--timeout 10]    # waits, prints {"id", "state", ...} as one line
//   node results.mjs JOB_ID --now             # prints the current state at once
//
// Exit code 0 for SUCCESS (or --now), 1 for another final state, 3 on timeout.
import { parseArgs } from "node:util";
import { connect } from "nats";
import { connectOptions, prefix } from "./options.mjs";

const FINAL = new Set(["SUCCESS", "FAILURE", "DEAD", "EXPIRED", "REVOKED"]);

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    timeout: { type: "string", default: "10" },
    now: { type: "boolean", default: false },
  },
});
const [id] = positionals;
if (!id) {
  console.error("usage: node results.mjs JOB_ID [--timeout SECONDS] [--now]");
  process.exit(2);
}

function show(record) {
  console.log(JSON.stringify({ id, ...record }));
}

const nc = await connect(connectOptions("jsqueue-node-results"));
try {
  const js = nc.jetstream();
  // bindOnly: never create the bucket (workers do, with the app's TTL)
  const kv = await js.views.kv(`${prefix}_results`, { bindOnly: true });
  if (opts.now) {
    const entry = await kv.get(id);
    show(entry && entry.operation === "PUT" ? entry.json() : { state: "PENDING" });
  } else {
    // The watch delivers the key's current value first, then every change.
    const watch = await kv.watch({ key: id });
    const timer = setTimeout(() => watch.stop(), Number(opts.timeout) * 1000);
    let final = null;
    for await (const entry of watch) {
      if (entry.operation !== "PUT") continue; // a deleted or purged record
      const record = entry.json();
      if (FINAL.has(record.state)) {
        final = record;
        break;
      }
    }
    clearTimeout(timer);
    if (final === null) {
      console.error(`job ${id} has no final state after ${opts.timeout}s`);
      process.exitCode = 3;
    } else {
      show(final);
      process.exitCode = final.state === "SUCCESS" ? 0 : 1;
    }
  }
} finally {
  await nc.close();
}
