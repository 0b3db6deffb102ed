/**
 * Every error bext raises, with its code, HTTP status where one applies, and
 * a message that says what was wrong and how to fix it. `errors.md` documents
 * each code; a test keeps the two in step.
 */

export const ERRORS = {
  BEXT_ERR_CONFIG_INVALID: { status: 500, message: 'the configuration is invalid' },
  BEXT_ERR_CONFIG_PARSE: { status: 500, message: 'the configuration file is not valid JSON' },
  BEXT_ERR_MANIFEST_INVALID: { status: 500, message: 'a plugin manifest is invalid' },
  BEXT_ERR_MANIFEST_MISSING: { status: 500, message: 'no bext-plugin.json in the plugin folder' },
  BEXT_ERR_LOCK_INVALID: { status: 500, message: 'plugins.lock.json is invalid' },
  BEXT_ERR_LOCK_INTEGRITY: { status: 500, message: "a plugin's files no longer match the integrity in plugins.lock.json" },
  BEXT_ERR_PLUGIN_NOT_FOUND: { status: 500, message: 'the plugin could not be found' },
  BEXT_ERR_PLUGIN_DUPLICATE: { status: 500, message: 'two plugins have the same name' },
  BEXT_ERR_PLUGIN_LOAD: { status: 500, message: 'a plugin failed to load' },
  BEXT_ERR_PLUGIN_HOOK_MISSING: { status: 500, message: 'a plugin declares a hook it does not export' },
  BEXT_ERR_PLUGIN_FAILED: { status: 503, message: 'a plugin failed while handling the request' },
  BEXT_ERR_PLUGIN_TIMEOUT: { status: 503, message: 'a plugin missed its deadline' },
  BEXT_ERR_PLUGIN_QUARANTINED: { status: 503, message: 'a plugin is quarantined after repeated failures' },
  BEXT_ERR_PLUGIN_BAD_DECISION: { status: 500, message: 'a plugin returned a decision its hook does not allow' },
  BEXT_ERR_ROUTE_CONFLICT: { status: 500, message: 'two plugins claim the same route' },
  BEXT_ERR_CAP_DENIED: { status: 403, message: 'a host function was called without the capability it needs' },
  BEXT_ERR_CAP_UNKNOWN: { status: 500, message: 'a capability name is not known' },
  BEXT_ERR_ADMIN_FORBIDDEN: { status: 403, message: 'an admin route was requested without the admin credential' },
  BEXT_ERR_NOT_FOUND: { status: 404, message: 'nothing serves this path' },
  BEXT_ERR_GROUP_OVERLOADED: { status: 503, message: 'the route group or app is serving its limit of requests at once' },
  BEXT_ERR_GROUP_RATE_LIMITED: { status: 429, message: 'the route group or app is over its request rate' },
  BEXT_ERR_BODY_TOO_LARGE: { status: 413, message: 'the request body is larger than allowed' },
  BEXT_ERR_SANDBOX_UNAVAILABLE: { status: 500, message: 'the sandbox kind is not available on this machine' },
  BEXT_ERR_SANDBOX_LIMIT: { status: 503, message: 'a sandboxed plugin hit its memory, fuel or stack limit' },
  BEXT_ERR_FETCH_DENIED: { status: 403, message: 'an outbound fetch went to a host that is not allowed' },
  BEXT_ERR_TOPIC_INVALID: { status: 400, message: 'a topic name is invalid' },
  BEXT_ERR_PROXY_UNAVAILABLE: { status: 503, message: 'no upstream member can take the request' },
  BEXT_ERR_PROXY_BAD_GATEWAY: { status: 502, message: 'the upstream failed to answer' },
  BEXT_ERR_PROXY_TIMEOUT: { status: 504, message: 'the upstream did not answer in time' },
  BEXT_ERR_WAF_BLOCKED: { status: 403, message: 'the web application firewall blocked the request' },
  BEXT_ERR_SSR_BUILD: { status: 500, message: 'the site could not be built for server rendering' },
  BEXT_ERR_SSR_OVERLOADED: { status: 503, message: 'every render worker is busy and the render queue is full' },
  BEXT_ERR_SSR_TIMEOUT: { status: 504, message: 'a page did not render within the render timeout' },
  BEXT_ERR_SSR_CRASHED: { status: 500, message: 'the render worker died while rendering the page' },
  BEXT_ERR_SSR_RENDER: { status: 500, message: 'the page threw while loading its data or rendering' },
  BEXT_ERR_IMAGE_DENIED: { status: 403, message: 'the image source is not on the allow-list' },
  BEXT_ERR_IMAGE_INVALID: { status: 400, message: 'the image request or its source is invalid' },
  BEXT_ERR_IMAGE_TOO_LARGE: { status: 413, message: 'the image source is larger than allowed' },
  BEXT_ERR_OG_INVALID: { status: 400, message: 'the Open Graph image request is invalid' },
  BEXT_ERR_TLS_CLIENT_CERT: { status: 403, message: 'this route requires a valid TLS client certificate' },
  BEXT_ERR_TLS_ISSUANCE: { status: 502, message: 'the certificate authority did not issue or revoke the certificate' },
  BEXT_ERR_DEPLOY_INVALID: { status: 400, message: 'a deploy, promote or rollback request is invalid' },
  BEXT_ERR_DEPLOY_UNSAFE_BUNDLE: { status: 400, message: 'a site bundle holds an entry that would land outside the site' },
  BEXT_ERR_DEPLOY_BUILD: { status: 422, message: 'the site could not be built, so no version was stored' },
  BEXT_ERR_DEPLOY_UNKNOWN_APP: { status: 404, message: 'no app or environment of that name is configured' },
  BEXT_ERR_DEPLOY_UNKNOWN_VERSION: { status: 404, message: 'no stored version of the app has that id' },
  BEXT_ERR_DEPLOY_NO_PREVIOUS: { status: 409, message: 'the environment has no earlier version to roll back to' },
  BEXT_ERR_ADMIN_UNREACHABLE: { status: 0, message: 'the admin listener could not be reached' },
  BEXT_ERR_SHUTDOWN: { status: 503, message: 'the server is shutting down' },
  BEXT_ERR_QUERY_INVALID: { status: 400, message: 'a query parameter of an admin route is invalid' },
  BEXT_ERR_STREAM_LIMIT: { status: 503, message: 'too many streams of this kind are open' },
  BEXT_ERR_SCHEDULE_INVALID: { status: 400, message: 'a scheduled task has an invalid name, cron pattern or option' },
  BEXT_ERR_SCHEDULE_NOT_FOUND: { status: 404, message: 'no such scheduled task' },
  BEXT_ERR_CLI_USAGE: { status: 0, message: 'the command line is wrong' },
} as const;

export type ErrorCode = keyof typeof ERRORS;

/**
 * An error with a code, an HTTP status and a hint that says how to fix it.
 *
 * @example
 * ```ts
 * throw new BextError('BEXT_ERR_CAP_DENIED', 'plugin "x" called bext_publish("a/b") without publish:a/b', {
 *   hint: 'grant it with `bext plugin add x` or add "publish:a/b" to the lock entry',
 * });
 * ```
 */
export class BextError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly hint?: string;
  readonly details?: Record<string, unknown>;
  constructor(code: ErrorCode, detail?: string, opts: { hint?: string; cause?: unknown; details?: Record<string, unknown> } = {}) {
    const base = ERRORS[code];
    super(detail ? `${detail}` : base.message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'BextError';
    this.code = code;
    this.status = base.status;
    this.hint = opts.hint;
    this.details = opts.details;
  }
  /** One line for a terminal: code, message, hint. */
  toLine(): string {
    return `${this.code}: ${this.message}${this.hint ? ` — ${this.hint}` : ''}`;
  }
  toJSON(): Record<string, unknown> {
    return { error: this.code, message: this.message, ...(this.hint ? { hint: this.hint } : {}), ...(this.details ?? {}) };
  }
}

export function isBextError(e: unknown): e is BextError {
  return e instanceof BextError;
}
