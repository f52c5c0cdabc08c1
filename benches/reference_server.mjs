// Start the public reference Durable Streams server (@durable-streams/server)
// for `unbroken bench http --compare-reference`, and print one ready line.
//
//   node benches/reference_server.mjs PORT DATA_DIR [MODULE]
//
// PORT 0 picks a free port. DATA_DIR selects the reference's file-backed store
// (it fsyncs every append). MODULE is the package's ESM entry point (a path);
// without it the package is imported by name, which only works where Node can
// resolve it from this file. On stdout, once listening:
//
//   reference: ready http://127.0.0.1:PORT
//
// SIGTERM or SIGINT stops the server and exits 0.
import { pathToFileURL } from "node:url";

const [portArg, dataDir, modulePath] = process.argv.slice(2);
if (portArg === undefined || !dataDir) {
  console.error("usage: node reference_server.mjs PORT DATA_DIR [MODULE]");
  process.exit(2);
}
const port = Number(portArg);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`reference: not a port: ${portArg}`);
  process.exit(2);
}

const mod = await import(modulePath ? pathToFileURL(modulePath).href : "@durable-streams/server");
const server = new mod.DurableStreamTestServer({ port, host: "127.0.0.1", dataDir });
const url = await server.start();
process.stdout.write(`reference: ready ${url}\n`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  try {
    await server.stop();
  } finally {
    process.exit(0);
  }
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
