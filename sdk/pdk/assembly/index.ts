/**
 * @bext/pdk — write bext plugins in AssemblyScript.
 *
 * A plugin exports one function per hook, named after it, taking no
 * arguments and returning i32 (0 = ok):
 *
 * ```ts
 * import { readRequest, respond, proceed, pass } from "@bext/pdk";
 *
 * export function onRequest(): i32 {
 *   const req = readRequest();
 *   if (req.path.startsWith("/admin") && req.header("authorization") === null) {
 *     return respond(401, "login first").header("www-authenticate", "Basic").done();
 *   }
 *   if (req.method == "OPTIONS") return pass();
 *   return proceed().setHeader("x-seen-by", "my-plugin").done();
 * }
 * ```
 */
export { Kind, Value, Writer, parse, quote } from "./json";
export {
  Request, ResponseHead, ResponseInput, Message, Connection, Task,
  readRequest, readResponse, readMessage, readConnection, readTask,
  pass, fail, proceed, Continue, respond, Respond, next, editResponse, ResponseEdit,
  allow, reject, drop, transform, deliver, outputJson,
} from "./hooks";
export {
  OK, DENIED, BAD_ARGUMENT, PENDING, FAILED, LIMIT, LogLevel, MetricKind,
  publish, log, kvGet, kvSet, kvDel, KvResult, fetch, FetchResult, metric, config, schedule, unschedule,
} from "./host";
export { JsonView } from "./view";
export { inputBytes, inputString, outputString, outputRaw, errorString } from "./io";
export { storeString, loadString } from "./extism";
