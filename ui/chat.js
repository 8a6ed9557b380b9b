// Conversations, 1:1 and groups. A 1:1 message goes over a WebRTC data channel to the
// peer's page when one is open (the node stores it and holds the link's copy back),
// and through the nodes otherwise; the page shows which. History pages come from
// the node's own SQLite, ticks from its receipts.
import { $, el, time } from "/dom.js";

const PAGE = 50;
const RETRY_DIRECT_MS = 5000;

export class Chat {
  constructor(api, mesh, people) {
    this.api = api;
    this.mesh = mesh;
    this.people = people;
    this.current = null; // {conversation, peer, group, name}
    this.items = new Map(); // message id -> <li>
    this.oldest = null;
    this.conversations = [];
    this.groups = new Map();
    this.refreshes = 0;
  }

  start() {
    this.api.subscribe("chat.*", "group.*");
    this.api.addEventListener("chat.message", (e) => this.#onMessage(e.detail, e.detail.via === "direct" ? "direct" : "relay"));
    this.api.addEventListener("chat.receipt", (e) => this.#tick(e.detail.id, e.detail.complete ? e.detail.state : null));
    this.api.addEventListener("group.updated", () => this.refresh());
    this.api.addEventListener("state", (e) => { if (e.detail.state === "up") { this.refresh(); if (this.current) this.open(this.current); } });
    this.mesh.addEventListener("message", (e) => { if (e.detail.data?.t === "chat") this.#onDirect(e.detail); });
    this.mesh.addEventListener("session", () => this.#showPath());
    this.people.addEventListener("chat", (e) => { location.hash = `#chat/${e.detail}`; });
    this.people.addEventListener("change", () => this.#renderGroupForm());
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    $("composer-text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); this.send(); }
    });
    $("older").addEventListener("click", () => this.#loadOlder());
    $("group-form").addEventListener("submit", (e) => { e.preventDefault(); this.#createGroup(); });
    $("group-leave").addEventListener("click", () => this.#groupOp("group.leave"));
    $("group-invite").addEventListener("click", () => {
      const names = prompt("Invite whom? Names or node ids, separated by commas");
      if (names) this.#groupOp("group.invite", { members: names.split(",").map((s) => s.trim()).filter(Boolean) });
    });
    document.addEventListener("visibilitychange", () => this.#markRead());
    // While a 1:1 conversation is open without a data channel, look for the peer's page
    // now and then: they may open it after us.
    setInterval(() => {
      const peer = this.current?.peer;
      if (peer && this.people.peers.get(peer)?.state === "alive" && !this.mesh.sessionsWith(peer).some((s) => s.state === "open" || s.state === "connecting")) {
        this.mesh.connect(peer).then(() => this.#showPath());
      }
    }, RETRY_DIRECT_MS);
  }

  async refresh() {
    const mine = ++this.refreshes; // answers may come back out of order: only the latest is drawn
    let answers;
    try {
      answers = await Promise.all([this.api.call("chat.conversations"), this.api.call("group.list")]);
    } catch { return; }
    if (mine !== this.refreshes) return;
    [this.conversations, this.groupList] = answers;
    this.groups = new Map(this.groupList.map((g) => [g.id, g]));
    const seen = new Set(this.conversations.map((c) => c.conversation));
    for (const g of this.groupList) if (g.member && !seen.has(g.conversation)) this.conversations.push({ conversation: g.conversation, group: g.id, peer: null, name: g.name, unread: 0, messages: 0 });
    const total = this.conversations.reduce((n, c) => n + (c.unread || 0), 0);
    $("unread-total").textContent = String(total);
    $("unread-total").hidden = total === 0;
    $("unread-total").setAttribute("aria-label", `${total} unread`);
    $("conversations").replaceChildren(...this.conversations.map((c) =>
      el("li", {},
        el("button", {
          type: "button", "aria-current": this.current?.conversation === c.conversation ? "true" : null,
          dataset: { conversation: c.conversation },
          onclick: () => { location.hash = c.group ? `#chat/group/${c.group}` : `#chat/${c.peer}`; },
        },
        el("span", { text: c.group ? `# ${c.name || "group"}` : c.name || this.people.name(c.peer) }),
        c.unread ? el("span", { class: "badge unread", text: String(c.unread), "aria-label": `${c.unread} unread` }) : null))));
  }

  // Open a conversation: {peer} or {group}.
  async open(target) {
    const group = target.group ? this.groups.get(target.group) : null;
    const conversation = group ? group.conversation : target.conversation || null;
    this.current = { peer: target.peer || null, group: target.group || null, conversation, name: group ? `# ${group.name}` : this.people.name(target.peer) };
    this.items.clear();
    this.oldest = null;
    $("messages").replaceChildren();
    $("conversation").hidden = false;
    $("no-conversation").hidden = true;
    $("conversation-name").textContent = this.current.name;
    $("group-actions").hidden = !group;
    $("chat-error").textContent = "";
    const page = await this.#log({});
    if (page) {
      if (page.length) this.current.conversation = page[0].conversation;
      page.forEach((m) => this.#append(m, "relay"));
      this.oldest = page[0]?.id ?? null;
      $("older").hidden = page.length < PAGE;
      this.#markRead();
    }
    this.refresh();
    this.#showPath();
    if (this.current.peer) {
      if (!this.mesh.openSessionsWith(this.current.peer).length) this.mesh.connect(this.current.peer).then(() => this.#showPath());
    }
  }

  #log(extra) {
    const where = this.current.group ? { group: this.current.group } : { peer: this.current.peer };
    return this.api.call("chat.log", { ...where, limit: PAGE, ...extra }).catch((err) => {
      $("chat-error").textContent = err.message;
      return null;
    });
  }

  async #loadOlder() {
    if (!this.oldest) return;
    const page = await this.#log({ before: this.oldest });
    if (!page) return;
    const list = $("messages");
    const first = list.firstChild;
    for (const m of page) list.insertBefore(this.#item(m, "relay"), first);
    this.oldest = page[0]?.id ?? this.oldest;
    $("older").hidden = page.length < PAGE;
  }

  async send() {
    const box = $("composer-text");
    const text = box.value;
    if (!text.trim() || !this.current) return;
    $("chat-error").textContent = "";
    const sessions = this.current.peer ? this.mesh.openSessionsWith(this.current.peer) : [];
    const where = this.current.group ? { group: this.current.group } : { peer: this.current.peer };
    try {
      const record = await this.api.call("chat.send", { ...where, text, direct: sessions.length > 0 || undefined });
      box.value = "";
      let path = "relay";
      if (record.body) {
        for (const s of sessions) if (s.send({ t: "chat", body: record.body })) path = "direct";
        delete record.body;
      }
      this.current.conversation = record.conversation;
      this.#append(record, path);
    } catch (err) {
      $("chat-error").textContent = err.message;
    }
    box.focus();
  }

  // A message that came over a data channel: shown at once, then handed to our node.
  async #onDirect({ node, data }) {
    let message;
    try { message = JSON.parse(data.body); } catch { return; }
    if (typeof message.id !== "string" || typeof message.text !== "string") return;
    try {
      await this.api.call("chat.deliver", { body: data.body });
    } catch (err) {
      console.warn("lannode chat: refused a direct message", err.message);
      return; // not stored, not shown: a forged or misdirected message
    }
    this.#onMessage({ id: message.id, conversation: message.conversation, sender: node, direction: "in", kind: message.kind, sent_at: message.sent_at, text: message.text, body: data.body }, "direct");
  }

  #onMessage(record, path) {
    if (this.current && record.conversation === this.current.conversation) {
      this.#append(record, path);
      this.#markRead();
    } else if (this.current && !this.current.conversation && record.direction === "in" && record.sender === this.current.peer && !record.conversation.startsWith("group/")) {
      this.current.conversation = record.conversation;
      this.#append(record, path);
      this.#markRead();
    }
    this.refresh();
    if (record.direction === "in" && record.kind === "text" && !record.conversation.startsWith("group/") && !this.mesh.openSessionsWith(record.sender).length) {
      this.mesh.connect(record.sender).then(() => this.#showPath()); // they are here: try the direct path
    }
  }

  #append(record, path) {
    if (this.items.has(record.id)) return;
    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(this.#item(record, path));
    if (atBottom || record.direction === "out") list.scrollTop = list.scrollHeight;
  }

  #item(record, path) {
    const state = record.read_at ? "read" : record.delivered_at ? "delivered" : "sent";
    const who = record.direction === "out" ? "you" : this.people.name(record.sender);
    const text = record.kind === "group" ? describeOp(record.op, this.people) : record.text;
    const li = el("li", { class: "message", dataset: { id: record.id, direction: record.direction, kind: record.kind, path } },
      record.kind === "group" || this.current?.peer ? null : el("strong", { text: `${who}: ` }),
      el("span", { class: "text", text }),
      el("span", { class: "meta" }, time(record.sent_at), " ",
        path === "direct" ? el("span", { class: "via", title: "sent over a data channel between the pages", text: "⇄ " }) : null,
        record.direction === "out" ? el("span", { class: "tick", dataset: { state }, "aria-label": state, role: "img" }) : null));
    this.items.set(record.id, li);
    if (this.verify && record.body) this.#check(record, li);
    return li;
  }

  // A guest's page checks every message it shows against its author's own signature
  // (what its host hands it could otherwise be anything).
  async #check(record, li) {
    let signed = null;
    try { signed = JSON.parse(record.body); } catch { /* shown as not holding */ }
    const ok = signed && signed.id === record.id && signed.text === record.text && signed.conversation === record.conversation && (await this.verify(signed));
    li.dataset.verified = ok ? "yes" : "no";
    if (!ok) li.append(el("span", { class: "forged", role: "alert", text: "⚠ its author's signature does not hold: not from them" }));
  }

  #tick(id, state) {
    const tick = this.items.get(id)?.querySelector(".tick");
    if (!tick || !state) return;
    if (tick.dataset.state === "read" && state === "delivered") return;
    tick.dataset.state = state;
    tick.setAttribute("aria-label", state);
  }

  #markRead() {
    if (document.hidden || !this.current) return;
    const ids = [...this.items.entries()].filter(([, li]) => li.dataset.direction === "in" && !li.dataset.read).map(([id]) => id);
    if (!ids.length) return;
    this.items.forEach((li, id) => { if (ids.includes(id)) li.dataset.read = "1"; });
    this.api.call("chat.read", { ids: ids.slice(-512) }).then(() => this.refresh()).catch(() => {});
  }

  #showPath() {
    const badge = $("conversation-path");
    const direct = this.current?.peer && this.mesh.openSessionsWith(this.current.peer).length > 0;
    badge.dataset.path = direct ? "direct" : "relay";
    badge.textContent = direct ? "direct: data channel between the pages" : this.current?.group ? "through the nodes (group)" : "through the nodes";
  }

  #renderGroupForm() {
    $("group-members").replaceChildren(...this.people.alive().map((p) =>
      el("label", {}, el("input", { type: "checkbox", value: p.node_id }), ` ${p.name}`)));
  }

  async #createGroup() {
    const name = $("group-name").value.trim();
    const members = [...$("group-members").querySelectorAll("input:checked")].map((i) => i.value);
    try {
      const group = await this.api.call("group.create", { name, members });
      $("group-name").value = "";
      await this.refresh();
      location.hash = `#chat/group/${group.id}`;
    } catch (err) {
      $("chat-error").textContent = err.message;
    }
  }

  async #groupOp(method, extra = {}) {
    try {
      await this.api.call(method, { group: this.current.group, ...extra });
      await this.refresh();
    } catch (err) {
      $("chat-error").textContent = err.message;
    }
  }
}

function describeOp(op, people) {
  if (!op) return "group changed";
  const names = (op.members || []).map((m) => people.name(m)).join(", ");
  switch (op.op) {
    case "create": return `group created${names ? ` with ${names}` : ""}`;
    case "rename": return `renamed to ${op.name}`;
    case "invite": return `${names} joined`;
    case "remove": return `${names} removed`;
    case "leave": return "someone left";
    default: return `group: ${op.op}`;
  }
}
