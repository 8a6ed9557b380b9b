// File drop's fallback: page to page over a WebRTC data channel, for when the nodes
// cannot carry it (the peer's node refuses or is out of reach, or the person picks
// "page to page"). The offer and the answer are JSON messages on the session's
// channel; the bytes are binary messages of at most CHUNK, each a 16-byte transfer id
// and the data, sent only while the channel's buffer is under HIGH_WATER. The
// receiving page assembles the file and offers it as a download. No resume on this
// path: the nodes' path has it.
import { bytes, el } from "/dom.js";

export const CHUNK = 256 * 1024;
const HIGH_WATER = 4 * 1024 * 1024;
const LOW_WATER = 1024 * 1024;

function hexId() {
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export class DirectDrop extends EventTarget {
  constructor(mesh, people) {
    super();
    this.mesh = mesh;
    this.people = people;
    this.outgoing = new Map(); // id -> {file, session, resolve, reject}
    this.incoming = new Map(); // id -> {name, size, parts, got, session, started}
  }

  start() {
    this.mesh.addEventListener("message", (e) => this.#onMessage(e.detail));
    this.mesh.addEventListener("binary", (e) => this.#onBinary(e.detail));
  }

  // Offer ``file`` to the peer's page; resolves when it is all sent, rejects on decline.
  async send(peer, file, progress) {
    if (!this.mesh.openSessionsWith(peer).length) await this.mesh.connect(peer);
    const session = await this.#waitOpen(peer);
    if (!session) throw new Error(`no data channel to ${this.people.name(peer)} could open`);
    const id = hexId();
    const done = new Promise((resolve, reject) => this.outgoing.set(id, { file, session, resolve, reject, progress }));
    session.send({ t: "file-offer", id, name: file.name, size: file.size });
    return done;
  }

  accept(id) {
    const item = this.incoming.get(id);
    if (!item) return;
    item.started = performance.now();
    item.session.send({ t: "file-accept", id });
  }

  decline(id) {
    const item = this.incoming.get(id);
    this.incoming.delete(id);
    item?.session.send({ t: "file-decline", id });
  }

  async #stream(id) {
    const item = this.outgoing.get(id);
    const channel = item.session.channel;
    const head = Uint8Array.from(id.match(/../g), (h) => parseInt(h, 16));
    channel.bufferedAmountLowThreshold = LOW_WATER;
    const started = performance.now();
    let offset = 0;
    while (offset < item.file.size) {
      if (channel.bufferedAmount > HIGH_WATER) await new Promise((r) => { channel.onbufferedamountlow = r; });
      if (channel.readyState !== "open") return item.reject(new Error("the data channel closed mid-file"));
      const piece = new Uint8Array(await item.file.slice(offset, offset + CHUNK - 16).arrayBuffer());
      const message = new Uint8Array(16 + piece.length);
      message.set(head, 0);
      message.set(piece, 16);
      channel.send(message);
      offset += piece.length;
      item.progress?.(offset, item.file.size, offset / Math.max((performance.now() - started) / 1000, 0.001));
    }
    this.outgoing.delete(id);
    item.resolve();
  }

  #onMessage({ session, data }) {
    if (data.t === "file-offer" && typeof data.id === "string" && /^[0-9a-f]{32}$/.test(data.id)) {
      const size = Number(data.size);
      if (!Number.isSafeInteger(size) || size < 0) return;
      this.incoming.set(data.id, { name: String(data.name).split(/[\\/]/).pop() || "file", size, parts: [], got: 0, session });
      this.dispatchEvent(new CustomEvent("offer", { detail: { id: data.id, name: String(data.name), size, from: session.node } }));
      if (size === 0) this.#finish(data.id);
    } else if (data.t === "file-accept" && this.outgoing.has(data.id)) {
      this.#stream(data.id);
    } else if (data.t === "file-decline" && this.outgoing.has(data.id)) {
      this.outgoing.get(data.id).reject(new Error(`${this.people.name(session.node)} declined`));
      this.outgoing.delete(data.id);
    }
  }

  #onBinary({ data }) {
    const bytesIn = new Uint8Array(data);
    if (bytesIn.length < 16) return;
    const id = [...bytesIn.subarray(0, 16)].map((b) => b.toString(16).padStart(2, "0")).join("");
    const item = this.incoming.get(id);
    if (!item || item.started === undefined) return; // not offered, or not accepted: dropped
    const piece = bytesIn.subarray(16);
    if (item.got + piece.length > item.size) return this.#fail(id, "more bytes than offered");
    item.parts.push(piece);
    item.got += piece.length;
    this.dispatchEvent(new CustomEvent("progress", { detail: { id, got: item.got, size: item.size, rate: item.got / ((performance.now() - item.started) / 1000) } }));
    if (item.got === item.size) this.#finish(id);
  }

  #finish(id) {
    const item = this.incoming.get(id);
    this.incoming.delete(id);
    const url = URL.createObjectURL(new Blob(item.parts));
    this.dispatchEvent(new CustomEvent("done", { detail: { id, name: item.name, size: item.size, url } }));
  }

  #fail(id, why) {
    this.incoming.delete(id);
    this.dispatchEvent(new CustomEvent("failed", { detail: { id, why } }));
  }

  async #waitOpen(peer, ms = 10000) {
    const until = performance.now() + ms;
    while (performance.now() < until) {
      const open = this.mesh.openSessionsWith(peer);
      if (open.length) return open[0];
      await new Promise((r) => setTimeout(r, 100));
    }
    return null;
  }
}

export function directRow(detail, drop, render) {
  return el("li", { class: "transfer", dataset: { id: detail.id, direction: "in", state: "pending", path: "direct" } },
    el("strong", { text: `${detail.name} from ${render(detail.from)} (page to page)` }),
    el("span", { class: "detail", text: `${bytes(detail.size)} · waiting for you` }),
    el("button", { type: "button", class: "primary accept", onclick: () => drop.accept(detail.id), text: "Accept" }),
    el("button", { type: "button", class: "decline", onclick: () => drop.decline(detail.id), text: "Decline" }));
}
