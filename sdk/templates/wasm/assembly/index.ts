import { readRequest, respond, proceed, pass } from "@bext/pdk";

/** Called for every request (narrow it with `match` in bext-plugin.json). */
export function onRequest(): i32 {
  const req = readRequest();
  if (req.path == "/__NAME__/hello") {
    return respond(200, "hello from __NAME__\n").header("content-type", "text/plain").done();
  }
  const ua = req.header("user-agent");
  if (ua !== null && ua.includes("BadBot")) {
    return respond(403, "no bots").done();
  }
  if (req.method == "OPTIONS") return pass();
  return proceed().responseHeader("x-__NAME__", "1").done();
}
