// Who is around: a live list with state and trust, the safety-code dialog, and a
// banner when a known name shows up under a new identity.
import { $, el } from "/dom.js";

export class People extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.peers = new Map(); // node id -> peer.list record
    this.warnings = new Map(); // node id -> text
  }

  start() {
    for (const topic of ["peer.state", "peer.trust", "peer.link", "peer.identity_warning"]) {
      this.api.addEventListener(topic, (e) => {
        if (topic === "peer.identity_warning") this.warnings.set(e.detail.node_id, `${e.detail.name} appeared with a new identity (${e.detail.node_id}); the ${e.detail.name} you know is ${e.detail.pinned_node_id}. Verify before trusting it.`);
        this.refresh();
      });
    }
    this.api.addEventListener("state", (e) => { if (e.detail.state === "up") this.refresh(); });
    this.api.subscribe("peer.*");
    $("verify-dialog").addEventListener("close", () => this.#verified());
    setInterval(() => this.refresh(), 5000);
  }

  get me() {
    return this.api.hello?.name || "";
  }

  name(nodeId) {
    return this.peers.get(nodeId)?.name || nodeId.slice(0, 8);
  }

  alive() {
    return [...this.peers.values()].filter((p) => p.state === "alive");
  }

  async refresh() {
    let list;
    try { list = await this.api.call("peer.list"); } catch { return; }
    this.peers = new Map(list.map((p) => [p.node_id, p]));
    for (const p of list) {
      if (p.warning && !this.warnings.has(p.node_id)) this.warnings.set(p.node_id, `a node calling itself ${p.name} has a new identity (${p.node_id}): ${p.warning}. Verify before trusting it.`);
    }
    for (const id of this.warnings.keys()) if (this.peers.get(id)?.trust === "verified") this.warnings.delete(id);
    this.render();
    this.dispatchEvent(new Event("change"));
  }

  render() {
    const items = [...this.peers.values()].map((p) =>
      el("li", { class: "peer", dataset: { node: p.node_id, state: p.state, trust: p.trust } },
        el("div", { class: "who" }, el("strong", { text: p.name }),
          p.host ? el("span", { class: "via", text: "your host" }) : p.guest_via ? el("span", { class: "via", text: `guest via ${p.guest_via_name}` }) : null,
          el("code", { text: p.node_id })),
        el("span", { class: "state", dataset: { state: p.state }, text: p.state }),
        el("span", { class: "trust", dataset: { trust: p.trust }, text: p.trust, title: "new: never dealt with; pinned: known key; verified: safety codes compared" }),
        el("button", { type: "button", class: "chat-with", "aria-label": `Chat with ${p.name}`, onclick: () => this.dispatchEvent(new CustomEvent("chat", { detail: p.node_id })), text: "Chat" }),
        p.state === "alive" ? el("button", { type: "button", class: "send-files", "aria-label": `Send files to ${p.name}`, onclick: () => this.dispatchEvent(new CustomEvent("drop", { detail: p.node_id })), text: "Send files" }) : null,
        p.state === "alive" ? el("button", { type: "button", class: "call", "aria-label": `Call ${p.name}`, onclick: () => this.dispatchEvent(new CustomEvent("call", { detail: p.node_id })), text: "Call" }) : null,
        p.trust === "verified" ? null : el("button", { type: "button", class: "verify", "aria-label": `Verify ${p.name}`, onclick: () => this.verify(p.node_id), text: "Verify…" }),
        this.warnings.has(p.node_id) ? el("p", { class: "warning", text: this.warnings.get(p.node_id) }) : null,
      ));
    $("peers").replaceChildren(...items);
    $("peers-empty").hidden = items.length > 0;
    const banner = $("identity-warning");
    banner.replaceChildren(...[...this.warnings.values()].map((w) => el("p", { text: `⚠ ${w}` })));
    banner.hidden = this.warnings.size === 0;
  }

  async verify(nodeId) {
    const dialog = $("verify-dialog");
    $("verify-error").textContent = "";
    try {
      const info = await this.api.call("peer.safety_code", { peer: nodeId });
      $("verify-name").textContent = info.name;
      $("verify-code").textContent = info.safety_code;
      dialog.dataset.node = nodeId;
      dialog.dataset.code = info.safety_code;
      dialog.showModal();
    } catch (err) {
      $("identity-warning").hidden = false;
      $("identity-warning").textContent = `cannot verify: ${err.message}`;
    }
  }

  async #verified() {
    const dialog = $("verify-dialog");
    if (dialog.returnValue !== "match") return;
    try {
      await this.api.call("peer.trust", { peer: dialog.dataset.node, code: dialog.dataset.code });
      this.warnings.delete(dialog.dataset.node);
    } catch (err) {
      $("identity-warning").hidden = false;
      $("identity-warning").textContent = `not verified: ${err.message}`;
    }
    this.refresh();
  }
}
