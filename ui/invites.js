// "Invite a phone": the guest door on this node's page. A QR code and a 6-digit code
// for the phone, what its browser will say about the certificate and why, and the
// guests this node hosts, each removable.
import { $, el } from "/dom.js";

export class Invites {
  constructor(api) {
    this.api = api;
  }

  start() {
    $("guests-invite").addEventListener("click", () => this.invite());
    $("guests-toggle").addEventListener("click", () => this.toggle());
    this.api.addEventListener("state", (e) => { if (e.detail.state === "up") this.refresh(); });
    this.api.subscribe("guest.*");
    for (const topic of ["guest.joined", "guest.removed"]) this.api.addEventListener(topic, () => this.refresh());
  }

  async refresh() {
    let status, list;
    try {
      [status, list] = await Promise.all([this.api.call("guests.status"), this.api.call("guests.list")]);
    } catch { return; }
    $("guests-state").textContent = status.url ? `open at ${status.url}` : status.problem || "closed";
    $("guests-toggle").textContent = status.enabled ? "Close the guest door" : "Open the guest door";
    $("guests-toggle").dataset.on = status.enabled ? "1" : "";
    $("guests-invite").disabled = !status.url;
    $("guests-list").replaceChildren(...list.guests.map((g) =>
      el("li", { class: "guest", dataset: { guest: g.guest } },
        el("strong", { text: g.name }), " ", el("span", { class: "state", dataset: { state: g.online ? "alive" : "away" }, text: g.online ? "here" : "away" }), " ",
        el("button", { type: "button", class: "remove-guest", "aria-label": `Remove ${g.name}`, onclick: () => this.remove(g), text: "Remove" }))));
    $("guests-empty").hidden = list.guests.length > 0;
  }

  async invite() {
    $("guests-error").textContent = "";
    try {
      const invite = await this.api.call("guests.invite");
      $("invite-qr").src = invite.qr;
      $("invite-code").textContent = `${invite.code.slice(0, 3)} ${invite.code.slice(3)}`;
      $("invite-url").textContent = invite.door;
      $("invite-fingerprint").textContent = invite.fingerprint;
      $("invite-expires").textContent = `${Math.round(invite.expires_in / 60)} minutes`;
      $("invite").hidden = false;
    } catch (err) {
      $("guests-error").textContent = err.message;
    }
  }

  async toggle() {
    try {
      await this.api.call("guests.enable", { on: !$("guests-toggle").dataset.on });
    } catch (err) {
      $("guests-error").textContent = err.message;
    }
    this.refresh();
  }

  async remove(guest) {
    if (!confirm(`Remove ${guest.name}? Every node sees them go, and their history on this node is deleted.`)) return;
    try { await this.api.call("guests.remove", { guest: guest.guest }); } catch (err) { $("guests-error").textContent = err.message; }
    this.refresh();
  }
}
