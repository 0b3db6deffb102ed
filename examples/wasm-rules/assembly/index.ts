// Custom request rules, compiled to WASM and run fuel-metered by bext.
import { readRequest, respond, pass, publish, quote } from "@bext/pdk";

const PROBES: string[] = ["/.env", "/.git/", "/wp-login.php", "/phpmyadmin", "/server-status", "/.aws/credentials"];
const SCANNERS: string[] = ["sqlmap", "nikto", "nuclei", "masscan", "zgrab"];

function block(reason: string, path: string, ip: string): i32 {
  publish("custom/rules", "{\"rule\":" + quote(reason) + ",\"path\":" + quote(path) + ",\"ip\":" + quote(ip) + "}");
  return respond(403, "blocked: " + reason + "\n").header("content-type", "text/plain").done();
}

export function onRequest(): i32 {
  const req = readRequest();
  const path = req.path.toLowerCase();
  for (let i = 0; i < PROBES.length; i++) {
    if (path.startsWith(PROBES[i])) return block("probe", req.path, req.remoteAddress);
  }
  const ua = req.header("user-agent");
  if (ua !== null) {
    const low = ua.toLowerCase();
    for (let i = 0; i < SCANNERS.length; i++) {
      if (low.includes(SCANNERS[i])) return block("scanner", req.path, req.remoteAddress);
    }
  }
  if (req.method == "TRACE" || req.method == "TRACK") return block("method", req.path, req.remoteAddress);
  return pass();
}
