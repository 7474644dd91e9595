/**
 * geo_ws.js: a browser client for geo_ws endpoints that resume (an ES module, no build step).
 *
 *   import { GeoSocket } from "/geo_ws/geo_ws.js";   // served by the app: see docs/browser.md
 *   const socket = new GeoSocket("/chat/ws?name=alice");
 *   socket.addEventListener("message", (e) => show(e.data));     // e.lastEventId: its offset
 *   socket.addEventListener("recovery-failed", () => reloadState()); // history lost: re-sync
 *   socket.send("hi");   // queued while offline, sent in order once connected again
 *   socket.close();      // a clean close: no reconnect
 *
 * It offers the subprotocol "geo_ws.resume.1" (the resume wire of docs/recovery.md): the
 * first message says {"type": "start"} or {"type": "resume", session, epoch, offset}; the
 * server's first message is a "hello"; then every data message carries its offset in the
 * endpoint's log ("<offset>:<text>", or 8 big-endian bytes before a binary payload). The
 * client keeps the last offset it handed to the app and drops anything at or below it, so
 * each message is delivered once, in order.
 *
 * After a drop it reconnects with jittered exponential backoff and resumes: the server gives
 * back the same id and rooms, then what was missed. Events (all dispatched on the GeoSocket):
 *   "open"            hello received; detail {id, resumed, recovered, missed}
 *   "message"         a MessageEvent: data (string, or ArrayBuffer: binary), lastEventId (offset)
 *   "resumed"         the server restored this client's session (same id and rooms)
 *   "recovery-failed" a resume could not replay everything missed (window passed, history lost);
 *                     detail {resumed, missed}: the app should re-sync its state
 *   "close"           the socket closed; detail {code, reason, reconnecting, delay}
 *   "control"         a server control message (JSON object), none defined yet
 * State: socket.id, socket.resumed, socket.recovered, socket.offset, socket.connected.
 * Sends made while the socket is open are not kept: a message sent just before a drop may be lost
 * (the server acknowledges nothing); what is queued while offline is sent after the reconnect.
 */

/** The subprotocol of the resume wire. */
export const SUBPROTOCOL = "geo_ws.resume.1";

/**
 * Whether the client stays closed after close code `code` (docs/recovery.md, "Coming back"):
 * 1000 and 3000-4999 (closed on purpose by the server or the app), 1002, 1003 and 1007-1010
 * (the protocol or the app refused what it sent). It comes back after anything else: 1001
 * (a restart, a deploy), 1006 (lost; also a refused handshake: browsers do not tell them
 * apart), 1011, 1012, 1013.
 */
export function isFinal(code) {
  return [1000, 1002, 1003].includes(code) || (code >= 1007 && code <= 1010) || code >= 3000;
}

/**
 * Split a positioned data frame of the wire.
 * @param {string|ArrayBuffer} data a text frame "<offset>:<text>", a control message "{...}",
 *   or a binary frame (8-byte big-endian offset, then the payload)
 * @returns {{offset: number, data: (string|ArrayBuffer)} | {control: object}}
 * @throws {Error} on a frame that does not follow the wire
 */
export function parseFrame(data) {
  if (typeof data === "string") {
    if (data.startsWith("{")) return { control: JSON.parse(data) };
    const colon = data.indexOf(":");
    const offset = colon > 0 ? Number(data.slice(0, colon)) : NaN;
    if (!Number.isSafeInteger(offset) || !/^\d+$/.test(data.slice(0, colon))) {
      throw new Error(`geo_ws: not a positioned text frame: ${data.slice(0, 40)}`);
    }
    return { offset, data: data.slice(colon + 1) };
  }
  if (data.byteLength < 8) throw new Error("geo_ws: binary frame shorter than its offset");
  const offset = Number(new DataView(data).getBigUint64(0, false));
  return { offset, data: data.slice(8) };
}

/**
 * The client's first message on a connection.
 * @param {{session: string, epoch: string, offset: number} | null} state where to resume from
 * @returns {string} JSON text
 */
export function firstMessage(state) {
  if (!state || !state.session) return JSON.stringify({ type: "start" });
  const { session, epoch, offset } = state;
  return JSON.stringify({ type: "resume", session, epoch, offset });
}

/**
 * The wait before reconnect attempt number `attempt` (0, 1, ...): exponential, capped, with
 * "equal jitter" (half fixed, half random) so that clients dropped together do not come back
 * together.
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { initial = 500, max = 30000, random = Math.random } = {}) {
  const ceiling = Math.min(max, initial * 2 ** attempt);
  return ceiling / 2 + (random() * ceiling) / 2;
}

/** A WebSocket url from a url relative to the page ("/chat/ws") or an http(s) one. */
function socketUrl(url) {
  const absolute = new URL(url, globalThis.location ? globalThis.location.href : undefined);
  if (absolute.protocol === "http:") absolute.protocol = "ws:";
  if (absolute.protocol === "https:") absolute.protocol = "wss:";
  return absolute.href;
}

/**
 * A WebSocket that reconnects, resumes and queues sends while offline.
 *
 * Options: initialDelay / maxDelay (ms, backoff bounds: 500 / 30000); maxQueue (sends kept while
 * offline: 1000; beyond it send() returns false); storage (e.g. sessionStorage: keep the session
 * across page reloads; default none, memory only); storageKey (default "geo_ws:" + url);
 * protocols (more subprotocols to offer after the resume one); resume (default true). With
 * resume: false it does not offer the resume subprotocol: for an endpoint without recovery,
 * it is a plain WebSocket that reconnects and queues (socket.plain is true, messages come as
 * sent). Browsers fail a handshake whose response names none of the subprotocols offered, so
 * resume: true against an endpoint without recovery never opens (close 1006, retried).
 */
export class GeoSocket extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = socketUrl(url);
    this.options = {
      ...{ initialDelay: 500, maxDelay: 30000, maxQueue: 1000, protocols: [], resume: true },
      ...options,
    };
    this.storageKey = this.options.storageKey || `geo_ws:${this.url}`;
    /** The public id of this client (ws.id on the server), once connected. */
    this.id = null;
    this.resumed = false;
    this.recovered = false;
    this.connected = false;
    /** True on an endpoint without recovery: nothing is resumed. */
    this.plain = false;
    this._state = this._load(); // {session, epoch, offset}: the resume position
    this._queue = [];
    this._attempt = 0;
    this._timer = null;
    this._closed = false;
    this._socket = null;
    this._open();
  }

  /** The offset of the last message handed to the app (0 before any). */
  get offset() {
    return this._state ? this._state.offset : 0;
  }

  /**
   * Send a message (string, ArrayBuffer, typed array or Blob); queued while offline.
   * @returns {boolean} false if the client is closed or the offline queue is full (not sent)
   */
  send(data) {
    if (this._closed) return false;
    if (this.connected) {
      this._socket.send(data);
      return true;
    }
    if (this._queue.length >= this.options.maxQueue) return false;
    this._queue.push(data);
    return true;
  }

  /** Close for good (no reconnect); the session is forgotten. */
  close(code = 1000, reason = "") {
    this._closed = true;
    clearTimeout(this._timer);
    this._queue = [];
    this._save(null);
    if (this._socket && this._socket.readyState <= WebSocket.OPEN) this._socket.close(code, reason);
    else this._emit("close", { code, reason, reconnecting: false, delay: null });
  }

  _open() {
    const offer = this.options.resume ? [SUBPROTOCOL] : [];
    const socket = new WebSocket(this.url, [...offer, ...this.options.protocols]);
    socket.binaryType = "arraybuffer";
    this._socket = socket;
    let hello = null;
    socket.onopen = () => {
      // An endpoint without recovery did not pick the subprotocol: a plain WebSocket then.
      this.plain = socket.protocol !== SUBPROTOCOL;
      if (this.plain) {
        this._state = null; // nothing to resume: a new connection each time
        this._hello({ id: null, session: null, epoch: null, offset: 0 });
      }
      // The first message needs no wait for the hello; queued sends follow it, in order.
      else socket.send(firstMessage(this._state));
      for (const data of this._queue.splice(0)) socket.send(data);
      this.connected = true;
    };
    socket.onmessage = (event) => {
      if (this.plain) {
        this.dispatchEvent(new MessageEvent("message", { data: event.data }));
      } else if (hello === null) {
        hello = JSON.parse(event.data);
        this._hello(hello);
      } else {
        this._deliver(parseFrame(event.data));
      }
    };
    socket.onclose = (event) => {
      if (socket !== this._socket) return;
      this.connected = false;
      const reconnecting = !this._closed && !isFinal(event.code);
      const delay = reconnecting ? this._schedule() : null;
      this._emit("close", { code: event.code, reason: event.reason, reconnecting, delay });
    };
  }

  _deliver(frame) {
    if (frame.control) {
      this._emit("control", frame.control); // none defined yet: apps may ignore them
    } else if (frame.offset > this._state.offset) {
      this._state.offset = frame.offset;
      this._save(this._state);
      const lastEventId = String(frame.offset);
      this.dispatchEvent(new MessageEvent("message", { data: frame.data, lastEventId }));
    } // else: delivered already (it came again around a resume)
  }

  _hello(hello) {
    const asked = Boolean(this._state && this._state.session);
    this.id = hello.id;
    this.resumed = Boolean(hello.resumed);
    this.recovered = Boolean(hello.recovered);
    // Recovered: the replay continues from our offset. Otherwise what is missed is gone:
    // live messages come after the log's top, in this (maybe new) epoch.
    const offset = this.recovered ? this._state.offset : hello.offset;
    this._state = { session: hello.session, epoch: hello.epoch, offset };
    this._save(this._state);
    this._attempt = 0;
    const { resumed, recovered } = this;
    const detail = { id: hello.id, resumed, recovered, missed: hello.missed };
    if (this.resumed) this._emit("resumed", detail);
    if (asked && !this.recovered) this._emit("recovery-failed", detail);
    this._emit("open", detail);
  }

  _schedule() {
    const delay = backoffDelay(this._attempt++, {
      initial: this.options.initialDelay,
      max: this.options.maxDelay,
    });
    this._timer = setTimeout(() => this._open(), delay);
    return delay;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _load() {
    try {
      const saved = this.options.storage && this.options.storage.getItem(this.storageKey);
      return saved ? JSON.parse(saved) : null;
    } catch {
      return null; // storage disabled or garbage: start a new session
    }
  }

  _save(state) {
    const storage = this.options.storage;
    if (!storage) return;
    if (state) storage.setItem(this.storageKey, JSON.stringify(state));
    else storage.removeItem(this.storageKey);
  }
}
