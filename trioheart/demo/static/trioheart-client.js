// trioheart-client.js: the browser side of trioheart's chat protocol.
//
// A plain ES module with no build step and no dependencies; the demo serves
// it at /static/trioheart-client.js and its chat page imports it. It keeps a
// WebSocket to one room alive and honest:
//
//   * app-level heartbeat: sends {"type": "ping", "id": N} after
//     `pingInterval` seconds without hearing anything; anything the server
//     sends counts as life; after `pingInterval + pingTimeout` seconds of
//     silence the server is declared dead and the socket dropped;
//   * reconnect with exponential backoff and full jitter, U(0, min(cap,
//     base * factor ** n)), as trioheart.backoff.Backoff, or inside the
//     server's drain window ("server_shutdown; retry=A..B" in the close
//     frame, or a {"type": "drain"} message) when it gave one;
//   * resume by sequence number (docs/reference/resume.rst): a reconnect
//     opens with `resume=1` and sends {"type": "resume", token, epoch, seq}
//     first; a message at or below the last seq is dropped, a gap drops the
//     connection so the next one resumes from the last seq, and a `reset`
//     or `refused` tells the application to resync;
//   * throttled or frozen timers (a background tab, a laptop asleep): a
//     timer that fires long after it was due says the page, not the server,
//     was silent, so the client probes with a ping before it convicts, as
//     Socket.IO's client compares Date.now() against when its ping timeout
//     was due.
//
// The pure parts (Backoff, the retry window, ResumeState, Liveness) take
// `now` and `random` as arguments and touch no timer or socket, so they can
// be tested on their own; TrioheartClient is the thin shell that does I/O.
// All durations are float seconds, as in the Python library.

"use strict";

export const DEFAULTS = Object.freeze({
  // The app-level heartbeat: ping after this long without hearing anything...
  pingInterval: 20,
  // ...and declare the server dead this long after that.
  pingTimeout: 10,
  // A timer that fires more than this late means timers were throttled or
  // frozen (hidden tabs are throttled to about one wake-up a second).
  lateSlack: 2,
  // trioheart.backoff.Backoff's defaults.
  backoff: Object.freeze({ base: 0.5, cap: 30, factor: 2 }),
  // How many status changes the client remembers (client.history).
  maxHistory: 100,
});

function positiveFinite(field, value) {
  if (typeof value !== "number" || !(value > 0 && value < Infinity)) {
    throw new RangeError(`${field} must be a positive, finite number of seconds; got ${value}`);
  }
  return value;
}

// ---------------------------------------------------------------------------
// Backoff and the drain window (trioheart/backoff.py)

/** Exponential backoff with full jitter: delay(n) = U(0, min(cap, base * factor ** n)). */
export class Backoff {
  constructor({ base = 0.5, cap = 30, factor = 2 } = {}) {
    this.base = positiveFinite("base", base);
    this.cap = positiveFinite("cap", cap);
    if (typeof factor !== "number" || !(factor >= 1 && factor < Infinity)) {
      throw new RangeError(`factor must be a finite number >= 1; got ${factor}`);
    }
    if (cap < base) throw new RangeError(`cap must not be below base; got cap=${cap} < base=${base}`);
    this.factor = factor;
  }

  /** min(cap, base * factor ** attempt), without overflow for any attempt. */
  ceiling(attempt) {
    if (!Number.isInteger(attempt) || attempt < 0) {
      throw new RangeError(`attempt must be a non-negative integer; got ${attempt}`);
    }
    if (this.factor > 1) {
      if (attempt >= Math.log(this.cap / this.base) / Math.log(this.factor)) return this.cap;
      return Math.min(this.cap, this.base * this.factor ** attempt);
    }
    return this.base;
  }

  /** The delay before retry number `attempt` (0 for the first): U(0, ceiling(attempt)). */
  delay(attempt, random = Math.random) {
    const v = this.ceiling(attempt);
    return Math.min(v, random() * v);
  }
}

/** The longest retry window a server may suggest (trioheart.backoff.MAX_RETRY_WINDOW). */
export const MAX_RETRY_WINDOW = 3600;

function retryWindow(earliest, latest) {
  const ok = (x) => typeof x === "number" && Number.isFinite(x) && x >= 0;
  if (!ok(earliest) || !ok(latest) || latest < earliest || latest > MAX_RETRY_WINDOW) return null;
  return Object.freeze({ earliest, latest });
}

function parseSeconds(text) {
  return /^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/.test(text) ? Number(text) : NaN;
}

/**
 * The window in a close frame's reason text ("server_shutdown; retry=0.5..30.0"),
 * or null if it has none or a bad one (RetryWindow.from_close_text).
 */
export function retryWindowFromCloseText(text) {
  if (typeof text !== "string") return null;
  for (const part of text.split(";").slice(1)) {
    const item = part.trim();
    const eq = item.indexOf("=");
    if (eq < 0 || item.slice(0, eq) !== "retry") continue;
    const value = item.slice(eq + 1);
    const dots = value.indexOf("..");
    if (dots < 0) return null;
    return retryWindow(parseSeconds(value.slice(0, dots)), parseSeconds(value.slice(dots + 2)));
  }
  return null;
}

/** The window in a {"type": "drain", "retry": [A, B]} message, or null. */
export function retryWindowFromMessage(message) {
  if (!message || message.type !== "drain" || !Array.isArray(message.retry)) return null;
  if (message.retry.length !== 2) return null;
  return retryWindow(message.retry[0], message.retry[1]);
}

/** A delay drawn uniformly from the window (RetryWindow.choose). */
export function chooseInWindow(window, random = Math.random) {
  const { earliest, latest } = window;
  return Math.min(latest, Math.max(earliest, earliest + random() * (latest - earliest)));
}

// ---------------------------------------------------------------------------
// The resume protocol, client side (trioheart.resume.ResumeClient)

export const ClientState = Object.freeze({
  IDLE: "idle", // no connection
  AWAITING_HELLO: "awaiting_hello", // a fresh connection is open
  RESUMING: "resuming", // a resume request was sent
  LIVE: "live", // in the room; sequenced messages are delivered
  REFUSED: "refused", // the server refused the resume and will close
  BROKEN: "broken", // a gap was seen: drop this connection and resume on a new one
});

const RESET_REASONS = new Set(["trimmed", "epoch_changed", "token_expired"]);
const REFUSE_REASONS = new Set(["malformed", "invalid_token", "invalid_seq"]);
const CONTROL_TYPES = new Set(["hello", "resumed", "reset", "refused", "token"]);

/** The server sent something the resume protocol does not allow here. */
export class ResumeProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = "ResumeProtocolError";
  }
}

/** This side called ResumeState out of order (a bug in the caller). */
export class ResumeStateError extends Error {
  constructor(message) {
    super(message);
    this.name = "ResumeStateError";
  }
}

function isSeq(value) {
  return Number.isSafeInteger(value) && value >= 0;
}

function seqField(message, name = "seq") {
  const seq = message[name];
  if (!isSeq(seq)) {
    throw new ResumeProtocolError(`${message.type} message needs a non-negative integer ${name}; got ${seq}`);
  }
  return seq;
}

function stringField(message, name) {
  const value = message[name];
  if (typeof value !== "string") {
    throw new ResumeProtocolError(`${message.type} message needs a string ${name}; got ${value}`);
  }
  return value;
}

/**
 * One room's side of the resume protocol, mirroring trioheart.resume.ResumeClient:
 * feed it every parsed server message (receive), and tell it when a connection
 * opens (startConnection) and ends (connectionLost). It returns events:
 *   {kind: "started", session, epoch, seq}      a fresh session, live from seq + 1
 *   {kind: "resumed", session, epoch, seq, replayed}
 *   {kind: "resync", reason}                   reset or refused: the application must resync
 *   {kind: "message", seq, message}            once, in order (seq null: unsequenced)
 *   {kind: "gap", expected, received}          drop the connection; the next one resumes
 */
export class ResumeState {
  constructor() {
    this.state = ClientState.IDLE;
    this.session = null;
    this.token = null;
    this.epoch = null;
    this.lastSeq = null;
    this.stats = { delivered: 0, duplicates: 0, gaps: 0, sessions: 0, resumes: 0, resyncs: 0 };
  }

  get canResume() {
    return this.token !== null;
  }

  /** Returns null for a fresh connection, or the resume request to send first (with resume=1). */
  startConnection() {
    if (this.state !== ClientState.IDLE) {
      throw new ResumeStateError(`startConnection() in state ${this.state}; call connectionLost() first`);
    }
    if (this.token === null) {
      this.state = ClientState.AWAITING_HELLO;
      return null;
    }
    this.state = ClientState.RESUMING;
    return JSON.stringify({ type: "resume", token: this.token, epoch: this.epoch, seq: this.lastSeq });
  }

  connectionLost() {
    this.state = ClientState.IDLE;
  }

  receive(message) {
    if (this.state === ClientState.IDLE) {
      throw new ResumeStateError("receive() with no connection; call startConnection()");
    }
    if (typeof message === "string") {
      try {
        message = JSON.parse(message);
      } catch (err) {
        throw new ResumeProtocolError("server message is not valid JSON");
      }
    }
    if (message === null || typeof message !== "object" || Array.isArray(message)) {
      throw new ResumeProtocolError(`server message must be a JSON object; got ${JSON.stringify(message)}`);
    }
    if (this.state === ClientState.BROKEN || this.state === ClientState.REFUSED) return [];
    if (CONTROL_TYPES.has(message.type)) return this._control(message);
    if (!("seq" in message)) return [{ kind: "message", seq: null, message }];
    return this._sequenced(message);
  }

  _control(message) {
    const kind = message.type;
    const state = this.state;
    if (kind === "hello" && state === ClientState.AWAITING_HELLO) {
      const seq = seqField(message);
      const session = stringField(message, "session");
      const token = stringField(message, "token");
      const epoch = stringField(message, "epoch");
      Object.assign(this, { session, token, epoch, lastSeq: seq, state: ClientState.LIVE });
      this.stats.sessions += 1;
      return [{ kind: "started", session, epoch, seq }];
    }
    if (kind === "resumed" && state === ClientState.RESUMING) {
      const seq = seqField(message);
      const replayed = seqField(message, "replay");
      const epoch = stringField(message, "epoch");
      const session = stringField(message, "session");
      if (epoch !== this.epoch || session !== this.session || seq < this.lastSeq) {
        throw new ResumeProtocolError(
          `resumed names session ${session}, epoch ${epoch} and seq ${seq}, but we asked for ` +
            `${this.session}, ${this.epoch} from seq ${this.lastSeq}`,
        );
      }
      if (replayed !== seq - this.lastSeq) {
        throw new ResumeProtocolError(`resumed promises ${replayed} messages for seq ${this.lastSeq}..${seq}`);
      }
      this.token = stringField(message, "token");
      this.state = ClientState.LIVE;
      this.stats.resumes += 1;
      return [{ kind: "resumed", session, epoch, seq, replayed }];
    }
    if ((kind === "reset" || kind === "refused") && state === ClientState.RESUMING) {
      const reason = stringField(message, "reason");
      if (!(kind === "reset" ? RESET_REASONS : REFUSE_REASONS).has(reason)) {
        throw new ResumeProtocolError(`unknown ${kind} reason ${reason}`);
      }
      this.session = this.token = this.epoch = this.lastSeq = null;
      this.state = kind === "reset" ? ClientState.AWAITING_HELLO : ClientState.REFUSED;
      this.stats.resyncs += 1;
      return [{ kind: "resync", reason, refused: kind === "refused" }];
    }
    if (kind === "token" && state === ClientState.LIVE) {
      this.token = stringField(message, "token");
      return [];
    }
    throw new ResumeProtocolError(`${kind} message is not expected in state ${state}`);
  }

  _sequenced(message) {
    const seq = seqField(message);
    if (this.state !== ClientState.LIVE) {
      throw new ResumeProtocolError(`sequenced message (seq ${seq}) before the session is live (state ${this.state})`);
    }
    const last = this.lastSeq;
    if (seq <= last) {
      this.stats.duplicates += 1;
      return [];
    }
    if (seq !== last + 1) {
      this.stats.gaps += 1;
      this.state = ClientState.BROKEN;
      return [{ kind: "gap", expected: last + 1, received: seq }];
    }
    this.lastSeq = seq;
    this.stats.delivered += 1;
    return [{ kind: "message", seq, message }];
  }
}

// ---------------------------------------------------------------------------
// Liveness: the app-level heartbeat, and throttled or frozen timers

/**
 * When to ping and when to give up on the server, from `now` values only.
 *
 * After `interval` seconds without hearing anything it asks for a ping; after
 * `interval + timeout` it declares the server dead, but only on a timer that
 * fired on time. A timer that fires more than `lateSlack` after it was due
 * (or a deadline reached with our own ping never sent) means this page was
 * throttled or frozen, so the silence proves nothing: it probes instead (a
 * ping, and `timeout` more seconds). If the probe's own deadline is also
 * reached late, it asks for one recheck on a fresh timer, so messages that
 * queued up while the page was frozen are read before the verdict.
 *
 * poll(now, dueAt) answers {kind: "wait" | "ping" | "probe" | "recheck" | "dead", ...}.
 */
export class Liveness {
  constructor({ interval, timeout, lateSlack = DEFAULTS.lateSlack }) {
    this.interval = positiveFinite("interval", interval);
    this.timeout = positiveFinite("timeout", timeout);
    this.lateSlack = positiveFinite("lateSlack", lateSlack);
    this.running = false;
    this.lastHeard = null;
    this.pingSentAt = null; // of the ping sent since we last heard anything
    this.probeUntil = null;
    this.lastPingId = 0;
    this.lastPingAt = null;
    this.stats = { pings: 0, probes: 0, lateTimers: 0, rechecks: 0, dead: 0 };
  }

  start(now) {
    Object.assign(this, { running: true, lastHeard: now, pingSentAt: null, probeUntil: null });
  }

  stop() {
    this.running = false;
  }

  /** Anything arrived: the server is alive. */
  heard(now) {
    this.lastHeard = Math.max(this.lastHeard ?? now, now);
    this.pingSentAt = null;
    this.probeUntil = null;
  }

  /** The round-trip time of a pong answering our latest ping, or null. */
  rttOf(id, now) {
    return id === this.lastPingId && this.lastPingAt !== null ? now - this.lastPingAt : null;
  }

  /** The server is declared dead at this time (unless something arrives). */
  deadline() {
    return this.probeUntil ?? this.lastHeard + this.interval + this.timeout;
  }

  /** When poll() has something to do next, or null when stopped. */
  wakeAt() {
    if (!this.running) return null;
    if (this.probeUntil !== null || this.pingSentAt !== null) return this.deadline();
    return this.lastHeard + this.interval;
  }

  /** Whether a timer due at `dueAt` that runs at `now` ran late: the page was throttled or frozen. */
  isLate(now, dueAt) {
    return dueAt !== null && dueAt !== undefined && now - dueAt > this.lateSlack;
  }

  poll(now, dueAt = null) {
    if (!this.running) return { kind: "wait" };
    const late = this.isLate(now, dueAt);
    if (late) this.stats.lateTimers += 1;
    if (this.probeUntil !== null) {
      if (now < this.probeUntil) return { kind: "wait" };
      if (late) {
        this.stats.rechecks += 1;
        return { kind: "recheck", lateBy: now - dueAt };
      }
      return this._dead(now);
    }
    if (now >= this.deadline()) {
      if (late || this.pingSentAt === null) {
        // Our own timers did not run: the silence may be ours. Ask again.
        this.probeUntil = now + this.timeout;
        this.stats.probes += 1;
        return { kind: "probe", id: this._ping(now), lateBy: late ? now - dueAt : now - this.deadline() };
      }
      return this._dead(now);
    }
    if (this.pingSentAt === null && now >= this.lastHeard + this.interval) {
      return { kind: "ping", id: this._ping(now) };
    }
    return { kind: "wait" };
  }

  _ping(now) {
    this.pingSentAt = now;
    this.lastPingAt = now;
    this.lastPingId += 1;
    this.stats.pings += 1;
    return this.lastPingId;
  }

  _dead(now) {
    this.stats.dead += 1;
    this.running = false;
    return { kind: "dead", silentFor: now - this.lastHeard };
  }
}

// ---------------------------------------------------------------------------
// The client: one WebSocket to one room, kept alive

const OPEN = 1;
const CLOSING = 2;

function defaultTimers() {
  return {
    set: (fn, seconds) => setTimeout(fn, Math.max(0, seconds) * 1000),
    clear: (handle) => clearTimeout(handle),
  };
}

/**
 * A chat connection that heals itself.
 *
 *   const client = new TrioheartClient({
 *     url: "ws://host/ws?room=lobby&name=ann",
 *     onMessage: (message, seq) => ...,     // each chat line once, in order
 *     onStatus: (status) => ...,            // {state, at, ...}: see below
 *     onResync: (reason) => ...,            // lines were lost: fetch state afresh
 *   });
 *   client.start();
 *   client.send({type: "chat", text: "hi"});   // false when not live
 *
 * status.state is one of: "connecting", "connected" (a fresh session),
 * "resumed" (status.replayed missed lines followed), "reset" (a resync was
 * needed; status.reason says why), "reconnecting" (status.retryAt, in
 * seconds since the epoch, and status.why), "stopped".
 *
 * Options (seconds): pingInterval, pingTimeout, lateSlack, backoff ({base,
 * cap, factor}); for tests: WebSocket, now (seconds), random, timers ({set,
 * clear}).
 */
export class TrioheartClient {
  constructor(options) {
    const o = { ...DEFAULTS, ...options };
    if (typeof o.url !== "string") throw new TypeError("url must be the room's ws:// or wss:// URL");
    this.url = o.url;
    this.backoff = new Backoff({ ...DEFAULTS.backoff, ...(options.backoff || {}) });
    this.liveness = new Liveness({ interval: o.pingInterval, timeout: o.pingTimeout, lateSlack: o.lateSlack });
    this.resume = new ResumeState();
    this.random = o.random || Math.random;
    this.now = o.now || (() => Date.now() / 1000);
    this.timers = o.timers || defaultTimers();
    this.WebSocket = o.WebSocket || globalThis.WebSocket;
    this.onMessage = o.onMessage || (() => {});
    this.onStatus = o.onStatus || (() => {});
    this.onResync = o.onResync || (() => {});
    this.maxHistory = o.maxHistory;
    this.status = { state: "idle", at: this.now() };
    this.history = [];
    this.stats = {
      connects: 0, opened: 0, lost: 0, attempt: 0, lastDelay: null, lastDelayFrom: null,
      lastRtt: null, pongs: 0, pingsAnswered: 0, protocolErrors: 0,
    };
    this._ws = null;
    this._retryTimer = null;
    this._beatTimer = null;
    this._beatDue = null;
    this._drainWindow = null;
    this._resyncReason = null;
    this._stopped = true;
  }

  /** Connect (and keep reconnecting until stop()). */
  start() {
    if (!this._stopped) return;
    this._stopped = false;
    this._connect();
  }

  /** Close for good: no reconnect. */
  stop() {
    this._stopped = true;
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    this.resume.connectionLost();
    this.liveness.stop();
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, "client stopped");
      } catch (err) {
        // already closed
      }
    }
    this._setStatus({ state: "stopped" });
  }

  /** Whether the client is in its room now (sends go out). */
  get live() {
    return this._ws !== null && this._ws.readyState === OPEN && this.resume.state === ClientState.LIVE;
  }

  /** Send a JSON message on the live connection; false (nothing sent) when not live. */
  send(message) {
    this.check();
    if (!this.live) return false;
    this._ws.send(JSON.stringify(message));
    return true;
  }

  /**
   * Look at the heartbeat now: call when the page becomes visible again,
   * comes back online, or before sending. A heartbeat timer that should have
   * fired by now but did not means the page's timers were throttled or
   * frozen; it is handled as the late timer it is.
   */
  check() {
    if (this._beatDue !== null && this.now() >= this._beatDue) {
      this.timers.clear(this._beatTimer);
      this._onBeat(this._beatDue);
    }
  }

  /** The page's hooks: visibility and network changes trigger check(). */
  watchPage(target = globalThis) {
    const check = () => this.check();
    if (target.document) target.document.addEventListener("visibilitychange", check);
    if (target.addEventListener) {
      for (const name of ["online", "pageshow", "focus"]) target.addEventListener(name, check);
    }
    return this;
  }

  // -- internals ------------------------------------------------------------

  _setStatus(status) {
    this.status = { ...status, at: this.now() };
    this.history.push(this.status);
    if (this.history.length > this.maxHistory) this.history.splice(0, this.history.length - this.maxHistory);
    this.onStatus(this.status);
  }

  _clearTimers() {
    if (this._retryTimer !== null) this.timers.clear(this._retryTimer);
    if (this._beatTimer !== null) this.timers.clear(this._beatTimer);
    this._retryTimer = this._beatTimer = this._beatDue = null;
  }

  _connect() {
    this._retryTimer = null;
    if (this._stopped) return;
    const request = this.resume.startConnection();
    const url = request === null ? this.url : this.url + (this.url.includes("?") ? "&" : "?") + "resume=1";
    this.stats.connects += 1;
    this._setStatus({ state: "connecting", resuming: request !== null, attempt: this.stats.attempt });
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (err) {
      this.resume.connectionLost();
      this._scheduleReconnect({ why: "connect_failed", error: String(err) });
      return;
    }
    this._ws = ws;
    this._drainWindow = null;
    // Connecting counts against the heartbeat too: a server that accepts
    // TCP but never answers the handshake is as dead as a silent one.
    this.liveness.start(this.now());
    this._armBeat();
    ws.onopen = () => {
      if (ws !== this._ws) return;
      this.stats.opened += 1;
      this.liveness.heard(this.now());
      if (request !== null) ws.send(request);
      this._armBeat();
    };
    ws.onmessage = (event) => {
      if (ws === this._ws) this._onMessage(event.data);
    };
    ws.onclose = (event) => {
      if (ws !== this._ws) return;
      const window = retryWindowFromCloseText(event.reason) || this._drainWindow;
      this._lost({ why: "closed", code: event.code, reason: event.reason, window });
    };
    ws.onerror = () => {}; // a close event follows
  }

  _onMessage(data) {
    const now = this.now();
    this.liveness.heard(now);
    this._armBeat();
    if (typeof data !== "string") return;
    let message;
    try {
      message = JSON.parse(data);
    } catch (err) {
      return this._drop("protocol_error", "not JSON");
    }
    const kind = message && message.type;
    if (kind === "ping") {
      // The server's app-level heartbeat (ConnectionConfig.app_heartbeat_interval).
      if (this._ws.readyState === OPEN) {
        this._ws.send(JSON.stringify("id" in message ? { type: "pong", id: message.id } : { type: "pong" }));
        this.stats.pingsAnswered += 1;
      }
      return;
    }
    if (kind === "pong") {
      this.stats.pongs += 1;
      const rtt = this.liveness.rttOf(message.id, now);
      if (rtt !== null) this.stats.lastRtt = rtt;
      return;
    }
    if (kind === "drain") {
      this._drainWindow = retryWindowFromMessage(message) || this._drainWindow;
      return;
    }
    let events;
    try {
      events = this.resume.receive(message);
    } catch (err) {
      if (!(err instanceof ResumeProtocolError)) throw err;
      this.stats.protocolErrors += 1;
      return this._drop("protocol_error", err.message);
    }
    for (const event of events) {
      if (event.kind === "message") {
        this.onMessage(event.message, event.seq);
      } else if (event.kind === "started") {
        this.stats.attempt = 0;
        if (this._resyncReason !== null) {
          this._setStatus({ state: "reset", reason: this._resyncReason, seq: event.seq });
          this._resyncReason = null;
        } else {
          this._setStatus({ state: "connected", session: event.session, seq: event.seq });
        }
      } else if (event.kind === "resumed") {
        this.stats.attempt = 0;
        this._setStatus({ state: "resumed", replayed: event.replayed, seq: event.seq });
      } else if (event.kind === "resync") {
        this._resyncReason = event.reason;
        this.onResync(event.reason);
      } else if (event.kind === "gap") {
        return this._drop("gap", `expected seq ${event.expected}, got ${event.received}`);
      }
    }
  }

  _armBeat() {
    if (this._beatTimer !== null) this.timers.clear(this._beatTimer);
    this._beatTimer = null;
    const due = this.liveness.wakeAt();
    this._beatDue = due;
    if (due === null) return;
    this._beatTimer = this.timers.set(() => this._onBeat(due), due - this.now());
  }

  _onBeat(due) {
    this._beatTimer = this._beatDue = null;
    const ws = this._ws;
    if (ws === null) return;
    // Check the socket first: if it closed, its close event says why.
    if (ws.readyState >= CLOSING) return;
    const action = this.liveness.poll(this.now(), due);
    if (action.kind === "ping" || action.kind === "probe") {
      if (ws.readyState === OPEN) ws.send(JSON.stringify({ type: "ping", id: action.id }));
      if (action.kind === "probe") this._note({ event: "late_timer", lateBy: action.lateBy });
    } else if (action.kind === "recheck") {
      // Let what queued up while the page was frozen be read first.
      this._note({ event: "late_timer", lateBy: action.lateBy });
      this._beatDue = this.now();
      this._beatTimer = this.timers.set(() => this._onBeat(this.now()), 0);
      return;
    } else if (action.kind === "dead") {
      return this._drop("heartbeat_timeout", `nothing heard for ${action.silentFor.toFixed(1)} s`);
    }
    this._armBeat();
  }

  _note(entry) {
    this.history.push({ ...entry, at: this.now() });
    if (this.history.length > this.maxHistory) this.history.splice(0, this.history.length - this.maxHistory);
  }

  /** Give up on the current socket ourselves (a dead server, a gap, a protocol error). */
  _drop(why, detail) {
    const ws = this._ws;
    detach(ws);
    try {
      // Browsers may send only 1000 or 3000-4999; 4002 is trioheart's heartbeat_timeout.
      ws.close(why === "heartbeat_timeout" ? 4002 : 4000, why);
    } catch (err) {
      // already closing
    }
    // Do not wait for the close handshake: a dead server never answers it.
    this._lost({ why, detail, window: null });
  }

  _lost({ why, code = null, reason = "", detail = "", window }) {
    this._ws = null;
    this.stats.lost += 1;
    this.resume.connectionLost();
    this.liveness.stop();
    this._clearTimers();
    if (this._stopped) return;
    this._scheduleReconnect({ why, code, reason, detail, window });
  }

  _scheduleReconnect({ why, code = null, reason = "", detail = "", window = null }) {
    let delay;
    if (window) {
      delay = chooseInWindow(window, this.random);
      this.stats.lastDelayFrom = "drain";
    } else {
      delay = this.backoff.delay(this.stats.attempt, this.random);
      this.stats.attempt += 1;
      this.stats.lastDelayFrom = "backoff";
    }
    this.stats.lastDelay = delay;
    const retryAt = this.now() + delay;
    this._setStatus({ state: "reconnecting", why, code, reason, detail, delay, retryAt, window });
    this._retryTimer = this.timers.set(() => this._connect(), delay);
  }
}

function detach(ws) {
  if (!ws) return;
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
}
