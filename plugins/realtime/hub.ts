/**
 * The hub: topics with their replay buffers, connections with their
 * subscriptions, and the fan-out from a published message to every
 * subscriber. Transport-neutral: SSE and WebSocket connections implement
 * `Conn`; the Redis relay implements `Relay`.
 *
 * Ordering: a topic's messages reach a connection in offset order. While a
 * connection replays history for a topic, live messages for that topic wait
 * in a per-connection queue and are flushed after the replay, skipping what
 * the replay already sent.
 */
import { randomBytes } from 'node:crypto';
import type { Principal } from './access.js';
import { PatternIndex, patternMatches } from './topics.js';

/** A position in a topic's stream. Offset 0 with an empty epoch means "from the start of whatever is kept". */
export interface Position {
  offset: number;
  epoch: string;
}

/** Someone subscribed to a presence-enabled topic. */
export interface Member {
  client: string;
  user: string | null;
  since: number;
}

export function newEpoch(): string {
  return randomBytes(6).toString('base64url').replace(/[-_]/g, 'x');
}

let idCounter = 0;
const idBase = randomBytes(4).toString('hex');
export function newClientId(): string {
  return `${idBase}${(++idCounter).toString(36)}`;
}

/** `o:e` — the form positions take in SSE ids and WebSocket messages. */
export function formatPosition(p: Position | null): string {
  return p ? `${p.offset}:${p.epoch}` : '0:';
}

export function parsePosition(s: string): Position | null {
  const i = s.indexOf(':');
  if (i <= 0) return null;
  const offset = Number(s.slice(0, i));
  const epoch = s.slice(i + 1);
  if (!Number.isSafeInteger(offset) || offset < 0 || !/^[A-Za-z0-9]{0,32}$/.test(epoch)) return null;
  return { offset, epoch };
}

/**
 * A message as it is stored and sent: serialised once, shared by every
 * connection that receives it.
 */
export class Entry {
  /** The WebSocket message and the SSE `data`. */
  readonly json: string;
  #sse: Buffer | null = null;
  #sseData: Buffer | null = null;
  #ws: Buffer | null = null;
  constructor(
    readonly topic: string,
    readonly offset: number,
    readonly epoch: string,
    /** Publish time, ms since the epoch. */
    readonly ts: number,
    dataJson: string,
    /** Publish id, set when the message went through the relay. */
    readonly pid: string | null = null,
  ) {
    // Topic and epoch characters need no JSON escaping (both are validated).
    this.json = `{"type":"message","topic":"${topic}","offset":${offset},"epoch":"${epoch}","data":${dataJson}}`;
  }
  /** The whole SSE event, with the single-topic id `offset:epoch`. */
  get sseFrame(): Buffer {
    return (this.#sse ??= Buffer.from(`id: ${this.offset}:${this.epoch}\ndata: ${this.json}\n\n`));
  }
  /** The SSE event without its id line. */
  get sseData(): Buffer {
    return (this.#sseData ??= Buffer.from(`data: ${this.json}\n\n`));
  }
  get wsFrame(): Buffer {
    return (this.#ws ??= Buffer.from(this.json));
  }
}

/** A concrete topic: its exact subscribers, its position, and (without Redis) its replay buffer. */
export class Topic {
  readonly segs: string[];
  readonly subs = new Set<Conn>();
  /** Last assigned (local) or last delivered (relay) position; epoch null when unknown. */
  epoch: string | null;
  offset = 0;
  readonly history: Entry[] = [];
  /** Entries that arrived while a gap was being filled from the relay. */
  syncing: Entry[] | null = null;
  members: Map<string, Member> | null = null;
  /** Local-only position used while the relay is down. */
  fallback: Position | null = null;
  lastActive = Date.now();
  constructor(readonly name: string, epoch: string | null) {
    this.segs = name.split('/');
    this.epoch = epoch;
  }
  head(): Position | null {
    return this.epoch === null ? null : { offset: this.offset, epoch: this.epoch };
  }
}

/** Subscribers of one wildcard pattern. */
export class PatternChannel {
  readonly conns = new Set<Conn>();
  constructor(readonly key: string, readonly segs: string[]) {}
}

/** What a connection asks for: a topic, or a pattern. */
export interface Subscription {
  key: string;
  segs: string[];
  wildcard: boolean;
}

/**
 * One client connection. Subclasses write frames in their transport's
 * format; `send` is the hot path of every delivery.
 */
export abstract class Conn {
  readonly id = newClientId();
  readonly subs = new Map<string, Topic | PatternChannel>();
  abstract readonly transport: 'sse' | 'ws';
  lastSeq = 0;
  /** Per topic, live messages waiting for that topic's replay to finish. */
  replaying: Map<string, Entry[]> | null = null;
  /** Every live message, while a subscription is being set up (so `subscribed` comes first). */
  held: Entry[] | null = null;
  holds = 0;
  closed = false;
  constructor(public principal: Principal | null) {}

  send(e: Entry, seq: number): number {
    // A connection reached through several subscriptions (exact and pattern) gets one copy.
    if (this.lastSeq === seq) return 0;
    this.lastSeq = seq;
    return this.pass(e);
  }

  pass(e: Entry): number {
    if (this.held !== null) {
      this.held.push(e);
      return 0;
    }
    if (this.replaying !== null) {
      const q = this.replaying.get(e.topic);
      if (q !== undefined) {
        q.push(e);
        return 0;
      }
    }
    this.write(e);
    return 1;
  }
  abstract write(e: Entry): void;
  /** A control event: `missed`, `subscribed`, `close`. */
  abstract notice(kind: string, body: Record<string, unknown>, id?: string): void;
  /** Bytes queued toward the client. */
  abstract buffered(): number;
  /** Closes with a reason the client can read; `hard` drops the socket at once. */
  abstract close(reason: string, hard: boolean): void;
}

/** The cross-instance relay, as the hub uses it. */
export interface Relay {
  readonly up: boolean;
  want(sub: Subscription): Promise<void>;
  unwant(sub: Subscription): void;
  publish(topic: string, dataJson: string, pid: string): Promise<Position>;
  history(topic: string): Promise<{ head: Position | null; entries: Entry[] }>;
  heads(topics: string[]): Promise<(Position | null)[]>;
  join(topic: string, m: Member): Promise<void>;
  leave(topic: string, client: string): Promise<void>;
  members(topic: string): Promise<Member[]>;
}

export interface HubOptions {
  replaySize: number;
  replayTtlMs: number;
  maxBufferBytes: number;
  /** Whether a topic tracks presence. */
  presence(topic: string): boolean;
  /** Publishes a presence event (through the kernel's onPublish chain). */
  announce(topic: string, body: Record<string, unknown>): void;
  log(level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void;
}

/** Counters for /__bext/hub/stats and metrics. */
export interface HubCounters {
  published: number;
  delivered: number;
  replayed: number;
  missed: number;
  /** Times the relay came back and followed topics were re-read from history. */
  resyncs: number;
  drops: Record<string, number>;
}

const PENDING_TIMEOUT_MS = 1000;

export class Hub {
  readonly topics = new Map<string, Topic>();
  readonly patterns = new PatternIndex<PatternChannel>();
  readonly conns = new Set<Conn>();
  readonly counters: HubCounters = { published: 0, delivered: 0, replayed: 0, missed: 0, resyncs: 0, drops: {} };
  relay: Relay | null = null;
  readonly #opts: HubOptions;
  #seq = 0;
  #pid = 0;
  readonly #pidBase = newEpoch();
  readonly #pending = new Map<string, (n: number) => void>();

  constructor(opts: HubOptions) {
    this.#opts = opts;
  }

  get maxBufferBytes(): number {
    return this.#opts.maxBufferBytes;
  }

  #topic(name: string): Topic {
    let t = this.topics.get(name);
    if (!t) this.topics.set(name, (t = new Topic(name, this.relay ? null : newEpoch())));
    return t;
  }

  // ----------------------------------------------------------- subscribing

  /**
   * Subscribes a connection, calls `subscribed` with each exact topic's
   * position (the one the client resumes from, else the head), then replays
   * what the client missed. Under a relay, live messages wait until
   * `subscribed` has been sent and each replay has caught up, so a client
   * sees every topic in offset order.
   */
  async attach(conn: Conn, subs: Subscription[], since: Map<string, Position>, subscribed: (positions: Map<string, Position | null>) => void): Promise<void> {
    this.conns.add(conn);
    const fresh = subs.filter((s) => !conn.subs.has(s.key));
    // Topics to replay: exact subscriptions, and positions the client holds for topics its patterns match.
    const replays = new Map<string, Position>();
    for (const [topic, pos] of since) {
      const segs = topic.split('/');
      if (fresh.some((s) => (s.wildcard ? patternMatches(s.segs, segs) : s.key === topic))) replays.set(topic, pos);
    }
    const positions = new Map<string, Position | null>();
    if (!this.relay) {
      for (const s of fresh) this.#subscribe(conn, s);
      for (const s of fresh) if (!s.wildcard) positions.set(s.key, since.get(s.key) ?? this.#topic(s.key).head());
      subscribed(positions);
      for (const [topic, pos] of replays) this.#replayLocal(conn, this.#topic(topic), pos);
      return;
    }
    conn.holds++;
    conn.held ??= [];
    if (replays.size) {
      conn.replaying ??= new Map();
      for (const t of replays.keys()) conn.replaying.set(t, []);
    }
    const wants: Promise<void>[] = [];
    for (const s of fresh) {
      const w = this.#subscribe(conn, s);
      if (w) wants.push(w);
    }
    try {
      await Promise.all(wants);
      const exact = fresh.filter((s) => !s.wildcard).map((s) => s.key);
      const heads = await this.relay.heads(exact).catch(() => exact.map(() => null));
      exact.forEach((t, i) => positions.set(t, since.get(t) ?? heads[i] ?? null));
      if (!conn.closed) subscribed(positions);
    } finally {
      if (--conn.holds === 0 && conn.held !== null) {
        const held = conn.held;
        conn.held = null;
        if (!conn.closed) for (const e of held) conn.pass(e);
      }
    }
    if (conn.closed) return;
    for (const [topic, pos] of replays) void this.#replayRelay(conn, topic, pos);
  }

  #subscribe(conn: Conn, s: Subscription): Promise<void> | null {
    let first = false;
    if (s.wildcard) {
      let ch = this.patterns.get(s.segs);
      if (!ch) {
        this.patterns.set(s.segs, (ch = new PatternChannel(s.key, s.segs)));
        first = true;
      }
      ch.conns.add(conn);
      conn.subs.set(s.key, ch);
    } else {
      const t = this.#topic(s.key);
      first = t.subs.size === 0;
      t.subs.add(conn);
      t.lastActive = Date.now();
      conn.subs.set(s.key, t);
      if (this.#opts.presence(s.key)) this.#join(t, conn);
    }
    return first && this.relay ? this.relay.want(s) : null;
  }

  unsubscribe(conn: Conn, key: string): boolean {
    const sub = conn.subs.get(key);
    if (!sub) return false;
    conn.subs.delete(key);
    conn.replaying?.delete(key);
    if (sub instanceof PatternChannel) {
      sub.conns.delete(conn);
      if (sub.conns.size === 0) {
        this.patterns.delete(sub.segs);
        this.relay?.unwant({ key, segs: sub.segs, wildcard: true });
      }
    } else {
      sub.subs.delete(conn);
      sub.lastActive = Date.now();
      if (sub.members?.has(conn.id)) this.#leave(sub, conn);
      if (sub.subs.size === 0) this.relay?.unwant({ key, segs: sub.segs, wildcard: false });
    }
    return true;
  }

  /** Forgets a connection; `reason` is counted when it is a drop. */
  detach(conn: Conn, dropReason?: string): void {
    if (!this.conns.delete(conn)) return;
    conn.closed = true;
    for (const key of [...conn.subs.keys()]) this.unsubscribe(conn, key);
    conn.replaying = null;
    if (dropReason) this.counters.drops[dropReason] = (this.counters.drops[dropReason] ?? 0) + 1;
  }

  /** Closes a connection for a reason the client is told, and counts it. */
  drop(conn: Conn, reason: string, hard: boolean): void {
    if (conn.closed) return;
    this.#opts.log('info', 'realtime connection dropped', { client: conn.id, transport: conn.transport, reason, buffered: conn.buffered() });
    this.detach(conn, reason);
    conn.close(reason, hard);
  }

  // ------------------------------------------------------------- replaying

  #replayLocal(conn: Conn, t: Topic, since: Position): void {
    this.#prune(t, Date.now());
    this.#replayInto(conn, t.name, since, t.head(), t.history);
  }

  async #replayRelay(conn: Conn, topic: string, since: Position): Promise<void> {
    let last: Position | null = null;
    try {
      const { head, entries } = await this.relay!.history(topic);
      if (conn.closed) return;
      last = this.#replayInto(conn, topic, since, head, entries);
    } catch (e) {
      if (conn.closed) return;
      this.counters.missed++;
      conn.notice('missed', { topic, reason: 'unavailable', detail: 'history could not be read; messages may be missing' });
      this.#opts.log('warn', 'realtime replay failed', { topic, error: (e as Error).message });
    }
    const queued = conn.replaying?.get(topic);
    conn.replaying?.delete(topic);
    if (conn.replaying?.size === 0) conn.replaying = null;
    for (const e of queued ?? []) {
      if (last && e.epoch === last.epoch && e.offset <= last.offset) continue;
      conn.write(e);
    }
  }

  /** Writes what the client missed since `since`; says so when some of it is gone. Returns the last position sent. */
  #replayInto(conn: Conn, topic: string, since: Position, head: Position | null, entries: readonly Entry[]): Position | null {
    const fromStart = since.offset === 0;
    let after = since.offset;
    if (!fromStart && (head === null || head.epoch !== since.epoch)) {
      this.#missed(conn, topic, { reason: 'epoch', detail: 'the history this position belongs to is gone', head });
      after = 0;
    } else if (head === null || after >= head.offset) return head;
    const first = entries.length ? entries[0]!.offset : (head?.offset ?? 0) + 1;
    if (after + 1 < first && (after > 0 || fromStart)) {
      this.#missed(conn, topic, { reason: 'expired', from: after + 1, to: first - 1, detail: 'these messages are older than the replay buffer keeps', head });
    }
    let last: Position | null = head;
    for (const e of entries) {
      if (e.offset <= after) continue;
      conn.write(e);
      this.counters.replayed++;
      last = e;
    }
    return last;
  }

  #missed(conn: Conn, topic: string, body: { reason: string; from?: number; to?: number; detail: string; head: Position | null }): void {
    this.counters.missed++;
    const { head, ...rest } = body;
    conn.notice('missed', { topic, ...rest, position: formatPosition(head) });
  }

  // ------------------------------------------------------------ publishing

  /** Whether some local connection follows the topic. */
  followed(topic: string, segs = topic.split('/')): boolean {
    const t = this.topics.get(topic);
    if (t && t.subs.size) return true;
    return this.patterns.size > 0 && this.patterns.any(segs);
  }

  /**
   * Publishes a message: through the relay when it is up (the offset is
   * global and delivery happens when the message comes back), otherwise to
   * local subscribers with a local offset. Resolves to local deliveries.
   */
  publish(topic: string, dataJson: string): number | Promise<number> {
    this.counters.published++;
    if (this.relay && this.relay.up) return this.#publishRelay(this.relay, topic, dataJson);
    return this.#publishLocal(topic, dataJson);
  }

  async #publishRelay(relay: Relay, topic: string, dataJson: string): Promise<number> {
    const pid = `${this.#pidBase}.${(++this.#pid).toString(36)}`;
    // Local subscribers get the message when it comes back from Redis, in global order; the count waits for that.
    const wait = this.followed(topic)
      ? new Promise<number>((resolve) => {
          const timer = setTimeout(() => {
            this.#pending.delete(pid);
            resolve(0);
          }, PENDING_TIMEOUT_MS);
          timer.unref();
          this.#pending.set(pid, (n) => {
            this.#pending.delete(pid);
            clearTimeout(timer);
            resolve(n);
          });
        })
      : null;
    try {
      await relay.publish(topic, dataJson, pid);
      return wait ? await wait : 0;
    } catch (e) {
      this.#pending.get(pid)?.(0);
      this.#opts.log('warn', 'realtime relay publish failed; delivering locally only', { topic, error: (e as Error).message });
    }
    return this.#publishLocal(topic, dataJson);
  }

  #publishLocal(topic: string, dataJson: string): number {
    const t = this.#topic(topic);
    if (this.relay) {
      // With the relay down, local offsets live in an epoch of their own (never replayed), and the
      // relay position stays where it was, so the stream resumes from it when Redis returns.
      const f = (t.fallback ??= { offset: 0, epoch: `L${newEpoch()}` });
      return this.#fanout(t, new Entry(topic, ++f.offset, f.epoch, Date.now(), dataJson));
    }
    t.epoch ??= newEpoch();
    const e = new Entry(topic, ++t.offset, t.epoch, Date.now(), dataJson);
    t.history.push(e);
    if (t.history.length > this.#opts.replaySize) t.history.shift();
    return this.#fanout(t, e);
  }

  /** A message from the relay, in the order Redis published it. */
  deliver(e: Entry): number {
    const t = this.#topic(e.topic);
    if (t.syncing !== null) {
      t.syncing.push(e);
      return 0;
    }
    if (t.epoch === e.epoch) {
      // Also drops the second copy when both a channel and a pattern subscription carry it.
      if (e.offset <= t.offset) return 0;
      if (t.offset > 0 && e.offset > t.offset + 1) {
        t.syncing = [e];
        void this.#fill(t);
        return 0;
      }
    } else if (t.epoch !== null && t.offset > 0) {
      this.#topicMissed(t, { reason: 'epoch', detail: 'the topic history was reset (relay restarted or expired)' }, e);
    }
    t.epoch = e.epoch;
    t.offset = e.offset;
    t.fallback = null;
    return this.#fanout(t, e);
  }

  /** Fills a gap in a topic's stream from the relay's history, then flushes what queued meanwhile. */
  async #fill(t: Topic): Promise<void> {
    const from = t.offset;
    try {
      const { entries } = await this.relay!.history(t.name);
      const queued = t.syncing ?? [];
      const lowest = queued.length ? queued.reduce((m, e) => Math.min(m, e.offset), Infinity) : Infinity;
      const fill = entries.filter((e) => e.epoch === t.epoch && e.offset > from && e.offset < lowest);
      if ((fill[0]?.offset ?? lowest) > from + 1) {
        this.#topicMissed(t, { reason: 'gap', from: from + 1, to: (fill[0]?.offset ?? lowest) - 1, detail: 'the relay lost these messages' }, null);
      }
      t.syncing = [...fill, ...queued];
    } catch (e) {
      this.#opts.log('warn', 'realtime gap fill failed', { topic: t.name, error: (e as Error).message });
      this.#topicMissed(t, { reason: 'gap', from: from + 1, detail: 'the relay history could not be read' }, null);
    }
    const pending = (t.syncing ?? []).sort((a, b) => a.offset - b.offset);
    t.syncing = null;
    // Jump the position so the queued entries pass the gap check.
    if (pending.length) t.offset = pending[0]!.offset - 1;
    for (const e of pending) this.deliver(e);
  }

  /** Re-reads each followed topic's history after the relay reconnected. */
  async resync(): Promise<void> {
    this.counters.resyncs++;
    const followed = [...this.topics.values()].filter((t) => t.subs.size > 0 || (this.patterns.size > 0 && this.patterns.any(t.segs)));
    await Promise.all(
      followed.map(async (t) => {
        if (t.syncing !== null) return;
        t.syncing = [];
        try {
          const { head, entries } = await this.relay!.history(t.name);
          if (head === null && t.epoch !== null) {
            this.#topicMissed(t, { reason: 'epoch', detail: 'the relay lost this topic history' }, null);
            t.epoch = null;
            t.offset = 0;
          }
          const queued = t.syncing;
          t.syncing = null;
          // Without a position there is no telling which of the kept messages are new here: start from the head.
          if (t.epoch === null && head !== null) {
            t.epoch = head.epoch;
            t.offset = head.offset;
          }
          for (const e of entries) this.deliver(e);
          for (const e of queued) this.deliver(e);
        } catch (e) {
          const queued = t.syncing ?? [];
          t.syncing = null;
          for (const q of queued) this.deliver(q);
          this.#opts.log('warn', 'realtime resync failed', { topic: t.name, error: (e as Error).message });
        }
      }),
    );
  }

  #topicMissed(t: Topic, body: { reason: string; from?: number; to?: number; detail: string }, next: Entry | null): void {
    const seen = new Set<Conn>();
    const tell = (c: Conn) => {
      if (seen.has(c)) return;
      seen.add(c);
      this.counters.missed++;
      c.notice('missed', { topic: t.name, ...body, ...(next ? { position: formatPosition(next) } : {}) });
    };
    for (const c of t.subs) tell(c);
    if (this.patterns.size) this.patterns.match(t.segs, (ch) => ch.conns.forEach(tell));
  }

  #fanout(t: Topic, e: Entry): number {
    const seq = ++this.#seq;
    let n = 0;
    for (const c of t.subs) {
      n += c.send(e, seq);
      if (c.buffered() > this.#opts.maxBufferBytes) this.drop(c, 'slow-consumer', true);
    }
    if (this.patterns.size) {
      this.patterns.match(t.segs, (ch) => {
        for (const c of ch.conns) {
          n += c.send(e, seq);
          if (c.buffered() > this.#opts.maxBufferBytes) this.drop(c, 'slow-consumer', true);
        }
      });
    }
    t.lastActive = Date.now();
    this.counters.delivered += n;
    if (e.pid !== null && this.#pending.size) {
      this.#pending.get(e.pid)?.(n);
    }
    return n;
  }

  // -------------------------------------------------------------- presence

  #join(t: Topic, conn: Conn): void {
    const m: Member = { client: conn.id, user: conn.principal?.sub ?? null, since: Date.now() };
    (t.members ??= new Map()).set(conn.id, m);
    const announce = () => this.#opts.announce(`presence/${t.name}`, { type: 'join', topic: t.name, ...m });
    if (this.relay) {
      this.relay.join(t.name, m).then(announce, (e: Error) => {
        this.#opts.log('warn', 'realtime presence join not recorded in the relay', { topic: t.name, error: e.message });
        announce();
      });
    } else announce();
  }

  #leave(t: Topic, conn: Conn): void {
    const m = t.members!.get(conn.id)!;
    t.members!.delete(conn.id);
    if (t.members!.size === 0) t.members = null;
    const announce = () => this.#opts.announce(`presence/${t.name}`, { type: 'leave', topic: t.name, client: m.client, user: m.user });
    if (this.relay) {
      this.relay.leave(t.name, conn.id).then(announce, (e: Error) => {
        this.#opts.log('warn', 'realtime presence leave not recorded in the relay', { topic: t.name, error: e.message });
        announce();
      });
    } else announce();
  }

  /** Who follows a presence-enabled topic, across instances when a relay is up. */
  async members(topic: string): Promise<Member[]> {
    if (this.relay && this.relay.up) {
      try {
        return await this.relay.members(topic);
      } catch (e) {
        this.#opts.log('warn', 'realtime presence read from the relay failed; answering with this instance only', { topic, error: (e as Error).message });
      }
    }
    return [...(this.topics.get(topic)?.members?.values() ?? [])];
  }

  /** Local members of every topic, for re-recording after the relay lost them. */
  localMembers(): [string, Member][] {
    const out: [string, Member][] = [];
    for (const t of this.topics.values()) for (const m of t.members?.values() ?? []) out.push([t.name, m]);
    return out;
  }

  // ----------------------------------------------------------- housekeeping

  #prune(t: Topic, now: number): void {
    const h = t.history;
    let k = 0;
    while (k < h.length && now - h[k]!.ts > this.#opts.replayTtlMs) k++;
    if (k) h.splice(0, k);
  }

  /**
   * Frees topics nobody follows whose history has expired. A freed topic's
   * next message starts a new epoch, which is how resuming clients learn
   * that its history is gone.
   */
  sweep(now: number): number {
    let freed = 0;
    for (const t of this.topics.values()) {
      if (t.subs.size > 0 || t.syncing !== null || t.members !== null) continue;
      this.#prune(t, now);
      if (t.history.length > 0) continue;
      // Under a relay, a topic matched only by patterns keeps its position while messages flow.
      if (this.relay && now - t.lastActive < this.#opts.replayTtlMs && this.patterns.size > 0 && this.patterns.any(t.segs)) continue;
      this.topics.delete(t.name);
      freed++;
    }
    return freed;
  }

  /** Closes every connection (shutdown, dispose). */
  closeAll(reason: string): void {
    for (const c of [...this.conns]) {
      this.detach(c);
      c.close(reason, false);
    }
  }
}
