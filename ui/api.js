// The page's connection to its node's local API (see the README's API section).
// One WebSocket, requests with ids, events by topic, and reconnection with backoff.
// The token comes from /config.json and is valid for this page's origin only.

export class NodeApi extends EventTarget {
  #ws = null;
  #nextId = 1;
  #pending = new Map();
  #topics = new Set();
  #backoff = 250;
  state = "connecting";

  constructor(config) {
    super();
    this.config = config; // /config.json: the API's address and this page's token
  }

  async start() {
    if (this.config.error) throw new Error(this.config.error);
    this.#open();
  }

  #setState(state, detail = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
  }

  #open() {
    const { api_url, token } = this.config;
    const ws = new WebSocket(api_url, ["lannode.v1", `lannode.token.${token}`]);
    this.#ws = ws;
    ws.onmessage = (msg) => this.#receive(JSON.parse(msg.data));
    ws.onclose = () => {
      for (const { reject } of this.#pending.values()) reject(new Error("connection to the node closed"));
      this.#pending.clear();
      this.#setState("down");
      setTimeout(() => this.#open(), this.#backoff);
      this.#backoff = Math.min(this.#backoff * 2, 5000);
    };
  }

  #receive(message) {
    if (message.event === "hello") {
      this.#backoff = 250;
      this.hello = message.data;
      if (this.#topics.size) this.call("events.subscribe", { topics: [...this.#topics] }).catch(() => {});
      this.#setState("up", message.data);
    } else if (message.event) {
      this.dispatchEvent(new CustomEvent(message.event, { detail: message.data }));
    } else if (this.#pending.has(message.id)) {
      const { resolve, reject } = this.#pending.get(message.id);
      this.#pending.delete(message.id);
      if (message.error) reject(Object.assign(new Error(message.error.message), { code: message.error.code }));
      else resolve(message.result);
    }
  }

  call(method, params = {}) {
    if (!this.#ws || this.#ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error("not connected to the node"));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#ws.send(JSON.stringify({ id, method, params }));
    });
  }

  // A binary message (an upload's piece); bufferedAmount is the page's backpressure.
  sendBinary(data) {
    if (!this.#ws || this.#ws.readyState !== WebSocket.OPEN) throw new Error("not connected to the node");
    this.#ws.send(data);
  }

  get bufferedAmount() {
    return this.#ws ? this.#ws.bufferedAmount : 0;
  }

  // Subscribe to topics now and after every reconnect.
  subscribe(...topics) {
    topics.forEach((t) => this.#topics.add(t));
    if (this.state === "up") return this.call("events.subscribe", { topics });
    return Promise.resolve();
  }
}
