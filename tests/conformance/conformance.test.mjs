// The official Durable Streams conformance suite, against the server at $STREAM_URL
// (e.g. http://127.0.0.1:4437; streams live at $STREAM_URL/v1/stream/{path}).
// Driven from here because the package's own CLI cannot find its test file.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"
runConformanceTests({ baseUrl: process.env.STREAM_URL })
