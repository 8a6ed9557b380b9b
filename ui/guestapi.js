// The page's connection to its host when it is a guest (served by the host's guest door
// over HTTPS on the LAN), with the same face as NodeApi: call(), events, subscribe().
//
// Identity: an Ed25519 key made here with WebCrypto, not extractable, kept in IndexedDB
// per host. It signs the guest's record, each session's challenge, every request and
// every chat message, so the host carries what this page says but cannot make it up.
// Transport: fetch() for requests and server-sent events (EventSource) for events:
// plain HTTPS, which every browser allows to a self-signed origin once its warning is
// passed (some refuse WebSockets there).
import { $ } from "/dom.js";

const enc = new TextEncoder();
const PIECE = 32 << 20; // the host takes at most 32 MiB a piece (MAX_PIECE)
const GROUP_OPS = { "group.create": "create", "group.rename": "rename", "group.invite": "invite", "group.remove": "remove", "group.leave": "leave" };
const DOMAIN = { record: "lannode guest v1\0", session: "lannode guest session v1\0", request: "lannode guest request v1\0", chat: "lannode chat v1\0" };

// JSON as the daemon signs it: keys sorted at every level, no spaces (JSON.stringify's
// escapes are Python's with ensure_ascii off).
export function canonical(value) {
  const sorted = (v) => (Array.isArray(v) ? v.map(sorted) : v && typeof v === "object" ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])])) : v);
  return JSON.stringify(sorted(value));
}

const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)));
const unb64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

function idb() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("lannode-guest", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("hosts");
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
}

async function stored(host, value) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction("hosts", value === undefined ? "readonly" : "readwrite");
    const request = value === undefined ? tx.objectStore("hosts").get(host) : value === null ? tx.objectStore("hosts").delete(host) : tx.objectStore("hosts").put(value, host);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export class GuestApi extends EventTarget {
  state = "connecting";
  hello = null;
  #me = null; // {keys, guest, name} from IndexedDB
  #session = "";
  #counter = 0;
  #events = null;
  #backoff = 500;

  constructor(config) {
    super();
    this.config = config;
  }

  async start() {
    if (!crypto.subtle || !window.indexedDB) throw new Error("this browser cannot keep a key of its own here (no WebCrypto or IndexedDB): use a current browser");
    this.#me = await stored(this.config.host);
    if (!this.#me) await this.#signIn();
    await this.#open();
  }

  async #sign(domain, text) {
    const data = enc.encode(domain + text);
    return new Uint8Array(await crypto.subtle.sign("Ed25519", this.#me.keys.privateKey, data));
  }

  // -- joining: the invite in the URL's fragment (it never reaches a server), or a code --
  async #signIn() {
    const invite = new URLSearchParams(location.hash.slice(1)).get("invite");
    if (invite) history.replaceState(null, "", location.pathname); // spent on use: no need to keep it around
    const form = $("sign-in-form");
    $("sign-in").hidden = false;
    document.body.dataset.signin = "1";
    $("sign-in-host").textContent = this.config.host_name;
    $("sign-in-fingerprint").textContent = this.config.fingerprint;
    $("sign-in-code-row").hidden = !!invite;
    this.#setState("signing-in");
    for (;;) {
      await new Promise((resolve) => form.addEventListener("submit", (e) => { e.preventDefault(); resolve(); }, { once: true }));
      $("sign-in-error").textContent = "";
      try {
        let keys;
        try {
          keys = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
        } catch {
          throw new Error("this browser has no Ed25519 keys (WebCrypto): use a current Chrome, Firefox or Safari");
        }
        const raw = new Uint8Array(await crypto.subtle.exportKey("raw", keys.publicKey));
        const box = await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]).catch(() => null); // drive shares are sealed to it
        const name = $("sign-in-name").value.trim();
        const record = { guest_key: b64url(raw), host: this.config.host, name, since: Date.now() };
        if (box) record.box_key = b64url(new Uint8Array(await crypto.subtle.exportKey("raw", box.publicKey)));
        this.#me = { keys, box };
        const signature = b64url(await this.#sign(DOMAIN.record, canonical(record)));
        const answer = await this.#post("/guest/join", { invite: invite || null, code: invite ? null : $("sign-in-code").value, record: { ...record, signature } });
        this.#me = { keys, box, guest: answer.guest, name };
        await stored(this.config.host, this.#me);
        $("sign-in").hidden = true;
        delete document.body.dataset.signin;
        return;
      } catch (err) {
        this.#me = null;
        $("sign-in-error").textContent = err.message;
        if (invite && /not valid/.test(err.message)) $("sign-in-code-row").hidden = false;
      }
    }
  }

  async #post(path, body, headers = {}) {
    const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json", ...headers }, body: typeof body === "string" ? body : JSON.stringify(body) });
    const answer = await response.json().catch(() => ({ error: `the host answered ${response.status}` }));
    if (!response.ok) throw Object.assign(new Error(answer.error || `the host answered ${response.status}`), { status: response.status, reason: answer.reason });
    return answer;
  }

  // -- sessions: the host's challenge, signed --
  async #open() {
    for (;;) {
      try {
        const { challenge } = await this.#post("/guest/challenge", { guest: this.#me.guest });
        const signature = b64url(await this.#sign(DOMAIN.session, `${challenge}\0${this.#me.guest}`));
        const answer = await this.#post("/guest/session", { guest: this.#me.guest, challenge, signature });
        this.#session = answer.session;
        this.#counter = 0;
        this.hello = answer.hello;
        this.#listen();
        return;
      } catch (err) {
        if (err.reason === "unknown_guest") { // removed by the host, or its home was reset: invited afresh
          await stored(this.config.host, null);
          await this.#signIn();
          continue;
        }
        this.#setState("down");
        await new Promise((r) => setTimeout(r, this.#backoff));
        this.#backoff = Math.min(this.#backoff * 2, 5000);
      }
    }
  }

  async #signed(text) {
    const session = this.#session;
    const counter = ++this.#counter; // taken now: other requests sign meanwhile
    const signature = b64url(await this.#sign(DOMAIN.request, `${session}\0${counter}\0${text}`));
    return { session, counter: String(counter), signature };
  }

  #listen() {
    this.#events?.close();
    this.#signed("GET /guest/events").then(({ session, counter, signature }) => {
      const source = new EventSource(`/guest/events?session=${encodeURIComponent(session)}&counter=${counter}&signature=${signature}`);
      this.#events = source;
      source.onmessage = (msg) => {
        const message = JSON.parse(msg.data);
        if (message.event === "hello") {
          this.#backoff = 500;
          this.hello = message.data;
          this.#setState("up", message.data);
        } else this.dispatchEvent(new CustomEvent(message.event, { detail: message.data }));
      };
      source.onerror = () => { // its URL is signed once: reopen with a fresh signature, or a fresh session
        source.close();
        if (this.#events !== source) return;
        this.#setState("down");
        setTimeout(() => this.#open(), this.#backoff);
        this.#backoff = Math.min(this.#backoff * 2, 5000);
      };
    });
  }

  #setState(state, detail = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
  }

  // -- requests --
  async call(method, params = {}) {
    if (method === "chat.send" && !params.bodies) return this.#sendChat(params);
    if (GROUP_OPS[method]) return this.#groupOp(GROUP_OPS[method], params);
    if (method === "drive.ls") return this.#driveList();
    if (method === "drive.get") return this.#driveGet(params);
    if (method === "drive.share") return this.#driveShare(params);
    return this.#rpc(method, params);
  }

  async #rpc(method, params = {}) {
    const body = JSON.stringify({ method, params });
    const { session, counter, signature } = await this.#signed(body);
    const answer = await this.#post("/guest/api", body, { "X-Lannode-Session": session, "X-Lannode-Counter": counter, "X-Lannode-Signature": signature }).catch((err) => {
      if (err.status === 401) this.#open();
      throw err;
    });
    if (answer.error) throw Object.assign(new Error(answer.error.message), { code: answer.error.code });
    return answer.result;
  }

  // A guest signs its own messages: the host drafts (ids, order), this page signs.
  async #sendChat(params) {
    const { text, texts, direct, ...where } = params;
    const wanted = texts || [text];
    const { drafts } = await this.call("chat.draft", { ...where, texts: wanted });
    if (!(await this.#mine(drafts[0])) || drafts.some((d, i) => d.text !== wanted[i] || d.kind !== "text")) throw new Error("the host drafted something other than what you wrote; not signed");
    const bodies = [];
    for (const draft of drafts) bodies.push({ ...draft, signature: b64(await this.#sign(DOMAIN.chat, canonical(draft))) });
    const records = await this.call("chat.send", { ...where, bodies, direct: direct || undefined });
    return texts ? records : records[0];
  }

  // A group operation, signed here too: the host checks and drafts it, this page signs.
  async #groupOp(op, params) {
    const { drafts } = await this.call("group.draft", { op, ...params });
    const draft = drafts[0];
    let said = {};
    try { said = JSON.parse(draft.text); } catch { /* refused below */ }
    if (!(await this.#mine(draft)) || draft.kind !== "group" || said.op !== op || (params.name !== undefined && said.name !== params.name.trim())) throw new Error("the host drafted another operation than the one asked for; not signed");
    const body = { ...draft, signature: b64(await this.#sign(DOMAIN.chat, canonical(draft))) };
    return this.call("group.commit", { body });
  }

  async #mine(draft) {
    return draft?.sender_key === b64(new Uint8Array(await crypto.subtle.exportKey("raw", this.#me.keys.publicKey)));
  }

  // The drive: what is shared with this guest comes sealed to its own X25519 key; the page
  // opens each share (name and read capability) and keeps the capabilities to itself
  // until it wants a file, when it hands one to its host for that one get.
  #caps = new Map();

  async #driveList() {
    const files = await this.#rpc("drive.ls");
    for (const f of files) {
      const share = await this.#openShare(f.sealed).catch(() => null);
      f.name = share ? share.name : null;
      f.readable = !!share;
      if (share) this.#caps.set(f.id, share.cap);
      delete f.sealed;
    }
    return files;
  }

  async #openShare(sealed) {
    if (!this.#me.box || !sealed.startsWith("g1:")) throw new Error("not a share for this browser");
    const bytes = unb64(sealed.slice(3));
    const ephemeral = bytes.slice(0, 32), nonce = bytes.slice(32, 44), body = bytes.slice(44);
    const theirs = await crypto.subtle.importKey("raw", ephemeral, { name: "X25519" }, false, []);
    const shared = await crypto.subtle.deriveBits({ name: "X25519", public: theirs }, this.#me.box.privateKey, 256);
    const mine = new Uint8Array(await crypto.subtle.exportKey("raw", this.#me.box.publicKey));
    const hkdf = await crypto.subtle.importKey("raw", shared, "HKDF", false, ["deriveKey"]);
    const salt = new Uint8Array([...ephemeral, ...mine]);
    const key = await crypto.subtle.deriveKey({ name: "HKDF", hash: "SHA-256", salt, info: enc.encode("lannode drive share v1") }, hkdf, { name: "AES-GCM", length: 256 }, false, ["decrypt"]);
    return JSON.parse(new TextDecoder().decode(await crypto.subtle.decrypt({ name: "AES-GCM", iv: nonce }, key, body)));
  }

  async #driveShare({ file, with: targets }) {
    const cap = this.#caps.get(file);
    if (!cap) throw new Error("this file is not shared with you");
    const name = (await this.#driveList()).find((f) => f.id === file)?.name || file;
    return this.#rpc("drive.share", { cap, name, with: targets });
  }

  async #driveGet({ file, op }) {
    const cap = this.#caps.get(file);
    if (!cap) throw new Error("this file is not shared with you");
    const files = await this.#driveList();
    const name = files.find((f) => f.id === file)?.name || file;
    const result = await this.#rpc("drive.get", { cap, name, op });
    const path = `/guest/drive/${result.download}`;
    const { session, counter, signature } = await this.#signed(`GET ${path}`);
    const link = document.createElement("a");
    link.href = `${path}?session=${encodeURIComponent(session)}&counter=${counter}&signature=${signature}`;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    return { ...result, path: "this device's downloads", failed: [] };
  }

  // Does a message's signature hold? (Every message a guest's page shows is checked.)
  static async verifyMessage(body) {
    try {
      const message = typeof body === "string" ? JSON.parse(body) : body;
      const { signature, ...fields } = message;
      const key = await crypto.subtle.importKey("raw", unb64(fields.sender_key), { name: "Ed25519" }, false, ["verify"]);
      return await crypto.subtle.verify("Ed25519", key, unb64(signature), enc.encode(DOMAIN.chat + canonical(fields)));
    } catch {
      return false;
    }
  }

  subscribe() {
    return Promise.resolve(); // a guest's page gets all of its own events
  }

  // A file handed to the host: pieces of 4 MiB, each signed with its SHA-256 (the host
  // checks the bytes are the ones signed before it writes them). Resolves with the
  // host's record of the upload; progress(bytes the host has).
  async putUpload(upload, file, offset, progress) {
    const path = `/guest/uploads/${upload}`;
    const prepare = async (at) => { // read, hash and sign a piece while the one before it travels
      const piece = file.slice(at, at + PIECE);
      const digest = [...new Uint8Array(await crypto.subtle.digest("SHA-256", await piece.arrayBuffer()))].map((b) => b.toString(16).padStart(2, "0")).join("");
      return { at, piece, digest, signed: await this.#signed(`PUT ${path} ${at} ${digest}`) };
    };
    const send = async ({ at, piece, digest, signed }) => {
      const headers = { "X-Lannode-Session": signed.session, "X-Lannode-Counter": signed.counter, "X-Lannode-Signature": signed.signature, "X-Lannode-Offset": String(at), "X-Lannode-Sha256": digest };
      const response = await fetch(path, { method: "PUT", body: piece, headers }); // a Blob: Chromium streams it (an ArrayBuffer body is copied, 8x slower)
      const record = await response.json().catch(() => ({ error: `the host answered ${response.status}` }));
      if (!response.ok) throw new Error(record.error || `the host answered ${response.status}`);
      progress(record.offset);
      return record;
    };
    // Two pieces on their way at once (the host writes them in order): no idle round trip between them.
    let record = null;
    const inflight = [];
    for (let at = offset; at < file.size; at += PIECE) {
      inflight.push(send(await prepare(at)));
      if (inflight.length >= 2) record = await inflight.shift();
    }
    for (const sending of inflight) record = await sending;
    return record;
  }

  // A signed address of a file this guest received, good for one download.
  async fileUrl(transfer, index) {
    const path = `/guest/files/${transfer}/${index}`;
    const { session, counter, signature } = await this.#signed(`GET ${path}`);
    return `${path}?session=${encodeURIComponent(session)}&counter=${counter}&signature=${signature}`;
  }

  sendBinary() {
    throw new Error("not yet for guests");
  }

  get bufferedAmount() {
    return 0;
  }
}
