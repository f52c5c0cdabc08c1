// The official TypeScript client, @durable-streams/client, driven from
// tests/onepipe/test_interop_node.py (which reads what it prints).
//
//   node interop.mjs read  <stream-url> catch-up|sse|long-poll
//       Reads the stream from its beginning with stream(). catch-up:
//       live: false, up to the tail. sse / long-poll: live in that mode,
//       until the stream is closed. Prints the JSON array of every value
//       read, in order, on stdout. While live, writes one JSON line per batch
//       on stderr: {"progress": {"items", "total", "upToDate", "streamClosed"}}.
//
//   node interop.mjs write <stream-url> <json-file> [--close]
//       Creates the stream as application/json (PUT; an existing one with
//       the same configuration is fine), then appends every value of the JSON
//       array in <json-file>, in order, with an IdempotentProducer (a new
//       producer id each run); --close closes the stream after the last
//       value (producer.close()), else the producer detaches. Prints
//       {"producerId", "epoch", "nextSeq", "finalOffset"} on stdout.
//
// Exit status 0 on success, 1 on an error (message on stderr), 2 on bad
// arguments, 3 when INTEROP_TIMEOUT_MS (default 120 000) passes first.
//
// Where the client comes from: ES modules resolve bare specifiers from the
// importing file's directory, and this file is not beside the node_modules
// that holds the client (tests/conformance/node_modules, the npm project of
// the node tests). So it resolves the package from that project --
// $DURABLE_STREAMS_NODE_PROJECT, default ../conformance next to this file --
// with createRequire, reads the package's ES-module entry from its
// package.json "exports", and imports that file.

import { randomUUID } from "node:crypto"
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

const timeoutMs = Number(process.env.INTEROP_TIMEOUT_MS ?? 120000)
setTimeout(() => {
  console.error(`interop.mjs: gave up after ${timeoutMs} ms`)
  process.exit(3)
}, timeoutMs).unref()

async function loadClient() {
  const project =
    process.env.DURABLE_STREAMS_NODE_PROJECT ??
    fileURLToPath(new URL("../conformance/", import.meta.url))
  const require = createRequire(join(project, "package.json"))
  const metaPath = require.resolve("@durable-streams/client/package.json")
  const meta = JSON.parse(readFileSync(metaPath, "utf8"))
  const esm = meta.exports?.["."]?.import
  const entry = (typeof esm === "string" ? esm : esm?.default) ?? meta.module
  if (!entry) throw new Error(`no ES-module entry in ${metaPath}`)
  return import(pathToFileURL(join(dirname(metaPath), entry)).href)
}

function usage() {
  console.error(
    "usage: node interop.mjs read <stream-url> catch-up|sse|long-poll\n" +
      "       node interop.mjs write <stream-url> <json-file> [--close]",
  )
  process.exit(2)
}

async function read(client, url, mode) {
  if (mode === "catch-up") {
    const res = await client.stream({ url, offset: "-1", live: false })
    return res.json()
  }
  if (mode !== "sse" && mode !== "long-poll") usage()
  const res = await client.stream({ url, offset: "-1", live: mode })
  const values = []
  let endReached
  const end = new Promise((resolve) => (endReached = resolve))
  res.subscribeJson((batch) => {
    values.push(...batch.items)
    const progress = {
      items: batch.items.length,
      total: values.length,
      upToDate: batch.upToDate,
      streamClosed: batch.streamClosed,
    }
    process.stderr.write(JSON.stringify({ progress }) + "\n")
    if (batch.streamClosed) endReached()
  })
  // The end is the batch marked streamClosed. res.closed rejects on an error;
  // it can resolve a little before the subscriber is handed the last batches
  // (the session ends as soon as the last response is fetched), hence the grace.
  const graceMs = 10000
  const failed = res.closed.then(
    () =>
      new Promise((_, reject) =>
        setTimeout(
          () => reject(new Error(`the session ended, but no batch marked streamClosed ` +
                                 `came within ${graceMs} ms (${values.length} values read)`)),
          graceMs,
        ).unref(),
      ),
  )
  await Promise.race([end, failed])
  return values
}

async function write(client, url, file, close) {
  const values = JSON.parse(readFileSync(file, "utf8"))
  if (!Array.isArray(values)) throw new Error(`${file} does not hold a JSON array`)
  const handle = await client.DurableStream.create({ url, contentType: "application/json" })
  const errors = []
  const producerId = `interop-${randomUUID()}`
  const producer = new client.IdempotentProducer(handle, producerId, {
    onError: (err) => errors.push(err),
  })
  for (const value of values) producer.append(JSON.stringify(value))
  await producer.flush()
  let finalOffset = null
  if (errors.length === 0) {
    if (close) finalOffset = (await producer.close()).finalOffset
    else await producer.detach()
  }
  if (errors.length > 0) throw errors[0]
  return {
    producerId,
    epoch: producer.epoch,
    nextSeq: producer.nextSeq,
    finalOffset,
  }
}

const [command, url, ...rest] = process.argv.slice(2)
if (!url) usage()
try {
  const client = await loadClient()
  let out
  if (command === "read" && rest.length === 1) out = await read(client, url, rest[0])
  else if (command === "write" && (rest.length === 1 || (rest.length === 2 && rest[1] === "--close")))
    out = await write(client, url, rest[0], rest.length === 2)
  else usage()
  // exit once stdout is written: an idle keep-alive connection would hold the loop
  process.stdout.write(JSON.stringify(out) + "\n", () => process.exit(0))
} catch (err) {
  console.error(`interop.mjs ${command}: ${err?.stack ?? err}`)
  process.exit(1)
}
