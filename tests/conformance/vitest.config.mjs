// vitest settings for the conformance tier (test_conformance.py runs
// `node_modules/.bin/vitest run --config vitest.config.mjs` from this folder).
//
//   STREAM_URL                  the server root to test (required)
//   UNBROKEN_CONFORMANCE_JSON   where the JSON report goes
//                               (default: node_modules/.conformance/results.json)
import { dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"

const here = dirname(fileURLToPath(import.meta.url))

if (!process.env.STREAM_URL) {
  throw new Error("STREAM_URL is not set: give the server root, e.g. STREAM_URL=http://127.0.0.1:4437")
}

export default {
  // everything is relative to this folder, whatever the caller's working directory
  root: here,
  cacheDir: resolve(here, "node_modules/.vite"),
  test: {
    include: ["conformance.test.mjs"],
    // vitest's defaults (5 s) are tight on a loaded CI machine; the suite sets
    // its own, longer timeouts on its long-poll and stress tests
    testTimeout: 30000,
    hookTimeout: 30000,
    reporters: ["default", "json"],
    outputFile: {
      json: process.env.UNBROKEN_CONFORMANCE_JSON
        ? resolve(process.env.UNBROKEN_CONFORMANCE_JSON)
        : resolve(here, "node_modules/.conformance/results.json"),
    },
  },
}
