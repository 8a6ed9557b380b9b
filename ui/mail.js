// Mail through this node's relay (lannode/mail.py and the mail plugin): a compose form
// whose attachments are files this page hands to its node, a chat transcript or a
// drive file; and the outbox, live from mail.state events, with retry and cancel.
import { $, bytes, el, time } from "/dom.js";

export class Mail {
  constructor(api, uploader) {
    this.api = api;
    this.uploader = uploader;
    this.extras = []; // [{kind: "transcript"|"drive", value, label}]
    this.messages = new Map();
    this.enabled = null;
  }

  start() {
    this.api.subscribe("mail.state");
    this.api.addEventListener("mail.state", (e) => this.#changed(e.detail));
    this.api.addEventListener("state", (e) => { if (e.detail.state === "up" && !$("tab-mail").hidden) this.refresh(); });
    $("mail-form").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
  }

  // From chat and drive: open the form with a transcript or a drive file attached.
  compose(extra) {
    if (!this.extras.some((x) => x.kind === extra.kind && x.value === extra.value)) this.extras.push(extra);
    if (!$("mail-subject").value) $("mail-subject").value = extra.subject || "";
    this.#renderExtras();
    location.hash = "#mail";
    $("mail-to").focus();
  }

  async refresh() {
    try {
      const [mail, list] = await Promise.all([this.api.call("mail.status"), this.api.call("mail.outbox", { all: true })]);
      this.enabled = mail.enabled;
      $("mail-setup").hidden = this.enabled;
      $("mail-setup").textContent = this.enabled ? "" : mail.problem;
      $("mail-relay").textContent = this.enabled ? ` (${mail.relay}, ${mail.security}), from ${mail.from}` : "";
      $("mail-send").disabled = !this.enabled;
      this.messages = new Map(list.map((m) => [m.id, m]));
      this.#renderOutbox();
    } catch { /* the connection line says it */ }
  }

  async send() {
    const split = (id) => $(id).value.split(",").map((s) => s.trim()).filter(Boolean);
    const params = { to: split("mail-to"), subject: $("mail-subject").value, body: $("mail-body").value };
    const cc = split("mail-cc");
    if (cc.length) params.cc = cc;
    $("mail-send").disabled = true;
    try {
      const files = [...$("mail-files").files];
      const uploads = [];
      for (const file of files) {
        this.#status(`handing ${file.name} to this node…`);
        uploads.push(await this.uploader.upload(file));
      }
      if (uploads.length) params.uploads = uploads;
      for (const x of this.extras) params[x.kind] = x.value;
      this.#status("queuing…");
      const record = await this.api.call("mail.send", params);
      this.#changed(record);
      this.#status(`queued for ${record.recipients.join(", ")}`, record.id);
      $("mail-form").reset();
      this.extras = [];
      this.#renderExtras();
    } catch (err) {
      this.#status(err.message);
      $("mail-status").dataset.error = "1";
    } finally {
      $("mail-send").disabled = this.enabled === false;
    }
  }

  #changed(record) {
    if (record.state === "cancelled") this.messages.delete(record.id);
    else this.messages.set(record.id, record);
    this.#renderOutbox();
    const status = $("mail-status");
    if (status.dataset.id === record.id) {
      const note = record.state === "sent" ? `sent to ${record.recipients.join(", ")}` : record.last_error ? `${record.state}: ${record.last_error}` : record.state;
      status.textContent = note;
      status.dataset.state = record.state;
    }
  }

  #renderExtras() {
    $("mail-extras").replaceChildren(...this.extras.map((x, i) => el("li", { class: "mail-extra", dataset: { kind: x.kind } },
      el("span", { text: x.label }),
      el("button", { type: "button", "aria-label": `Remove ${x.label}`, text: "×", onclick: () => { this.extras.splice(i, 1); this.#renderExtras(); } }))));
  }

  #renderOutbox() {
    const list = [...this.messages.values()].sort((a, b) => b.created_at - a.created_at);
    $("mail-outbox").replaceChildren(...list.map((m) => {
      let note = m.state === "sent" ? `sent ${time(m.sent_at * 1000)}` : m.waiting_for ? `waiting for ${m.waiting_for}` : "";
      if (m.last_error && m.state !== "sent") note = note ? `${note}: ${m.last_error}` : m.last_error;
      if (m.state === "retrying" && m.next_attempt_at) note += ` — next try ${time(m.next_attempt_at * 1000)}`;
      const attached = m.attachments.length ? ` · ${m.attachments.map((a) => `${a.name} (${bytes(a.size)})`).join(", ")}` : "";
      return el("li", { class: "mail-message", dataset: { id: m.id, state: m.state } },
        el("span", { class: "state", dataset: { state: m.state }, text: m.state }),
        el("div", { class: "mail-what" },
          el("strong", { text: m.subject || "(no subject)" }),
          el("span", { class: "detail", text: `to ${m.to}${attached} · ${m.attempts} attempt${m.attempts === 1 ? "" : "s"}` }),
          note ? el("span", { class: "detail mail-note", text: note }) : null),
        ["failed", "retrying"].includes(m.state) ? el("button", { type: "button", class: "retry", text: "Retry now", onclick: () => this.#act("mail.retry", m) }) : null,
        ["failed", "retrying", "queued"].includes(m.state) ? el("button", { type: "button", class: "cancel danger", text: "Cancel", onclick: () => this.#act("mail.cancel", m) }) : null);
    }));
    $("mail-empty").hidden = list.length > 0;
  }

  async #act(method, m) {
    try {
      await this.api.call(method, { id: m.id });
    } catch (err) {
      this.#status(err.message);
    }
  }

  #status(text, id) {
    const status = $("mail-status");
    status.textContent = text;
    delete status.dataset.error;
    delete status.dataset.state;
    if (id) status.dataset.id = id; else delete status.dataset.id;
  }
}
