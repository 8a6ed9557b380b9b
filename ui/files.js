// File drop: pick or drag files onto a peer. The page hands each file to its own node
// (upload.js: resumable, also after a reload), and the node sends them over its
// encrypted link to the peer's node, which asks the person there to accept. Progress
// and rate come from the nodes' events. When the nodes cannot carry it, or the person
// picks "page to page", the file goes over a data channel instead (directdrop.js).
import { directRow } from "/directdrop.js";
import { $, bytes, el } from "/dom.js";


export class Files {
  constructor(api, people, uploader, direct) {
    this.api = api;
    this.people = people;
    this.uploader = uploader;
    this.direct = direct;
    this.rows = new Map(); // transfer id -> <li>
  }

  start() {
    this.api.subscribe("transfer.*");
    for (const topic of ["transfer.offered", "transfer.state", "transfer.progress"]) {
      this.api.addEventListener(topic, (e) => this.#render(e.detail));
    }
    this.api.addEventListener("state", (e) => { if (e.detail.state === "up") this.refresh(); });
    this.people.addEventListener("change", () => this.#renderPeers());
    this.people.addEventListener("drop", (e) => { location.hash = "#files"; $("drop-peer").value = e.detail; });
    $("file-input").addEventListener("change", (e) => this.send([...e.target.files]).finally(() => { e.target.value = ""; }));
    $("folder-input").addEventListener("change", (e) => this.send([...e.target.files]).finally(() => { e.target.value = ""; }));
    this.direct.addEventListener("offer", (e) => {
      const row = directRow(e.detail, this.direct, (node) => this.people.name(node));
      this.rows.set(e.detail.id, row);
      $("transfers").prepend(row);
    });
    this.direct.addEventListener("progress", (e) => {
      const row = this.rows.get(e.detail.id);
      if (!row) return;
      row.dataset.state = "active";
      const pct = Math.floor((100 * e.detail.got) / Math.max(e.detail.size, 1));
      row.replaceChildren(row.querySelector("strong"), el("progress", { max: "100", value: String(pct) }),
        el("span", { class: "detail", text: `active · ${bytes(e.detail.got)} of ${bytes(e.detail.size)} · ${bytes(e.detail.rate)}/s` }));
    });
    this.direct.addEventListener("done", (e) => {
      const row = this.rows.get(e.detail.id);
      if (!row) return;
      row.dataset.state = "done";
      row.replaceChildren(row.querySelector("strong"), el("span", { class: "detail", text: `done · ${bytes(e.detail.size)} · ` }),
        el("a", { href: e.detail.url, download: e.detail.name, class: "button save", text: `Save ${e.detail.name}` }));
    });
    this.direct.addEventListener("failed", (e) => this.#status(`a page-to-page file failed: ${e.detail.why}`));
    const zone = $("drop-zone");
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.dataset.over = "1"; });
    zone.addEventListener("dragleave", () => { delete zone.dataset.over; });
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      delete zone.dataset.over;
      this.send([...e.dataTransfer.files]);
    });
  }

  async refresh() {
    try {
      for (const t of await this.api.call("transfer.list")) this.#render(t);
    } catch { /* shown by the connection line */ }
  }

  async send(files) {
    const peer = $("drop-peer").value;
    if (!files.length) return;
    if (!peer) return this.#status("pick whom to send to first");
    const label = files.length === 1 ? files[0].name : `${files.length} files`;
    if ($("drop-path").value === "direct") return this.#sendDirect(peer, files, label, "");
    try {
      const uploads = [];
      const total = files.reduce((n, f) => n + f.size, 0);
      let before = 0;
      const started = performance.now();
      for (const file of files) {
        uploads.push(await this.uploader.upload(file, (done) => {
          const seconds = (performance.now() - started) / 1000;
          this.#status(`handing ${label} to this node: ${bytes(before + done)} of ${bytes(total)} (${bytes((before + done) / Math.max(seconds, 0.001))}/s)`, before + done, total);
        }));
        before += file.size;
      }
      const t = await this.api.call("transfer.send", { peer, uploads });
      this.#render(t);
      this.#status(`offered ${label} to ${this.people.name(peer)}; waiting for them to accept`);
    } catch (err) {
      // the nodes cannot carry it: try page to page
      await this.#sendDirect(peer, files, label, `the nodes could not take it (${err.message}); `);
    }
  }

  async #sendDirect(peer, files, label, why) {
    try {
      for (const file of files) {
        this.#status(`${why}offering ${file.name} to ${this.people.name(peer)}'s page…`);
        await this.direct.send(peer, file, (done, total, rate) =>
          this.#status(`${file.name} page to page: ${bytes(done)} of ${bytes(total)} (${bytes(rate)}/s)`, done, total));
      }
      this.#status(`${label} sent page to page`);
    } catch (err) {
      this.#status(`could not send ${label}: ${err.message}`);
    }
  }

  #render(t) {
    let row = this.rows.get(t.id);
    if (!row) {
      row = el("li", { class: "transfer", dataset: { id: t.id, direction: t.direction } });
      this.rows.set(t.id, row);
      $("transfers").prepend(row);
    }
    row.dataset.state = t.state;
    const who = t.peer_name || this.people.name(t.peer);
    const what = t.names.length === 1 ? t.names[0] : `${t.files} files`;
    const pct = t.total ? Math.floor((100 * t.bytes) / t.total) : 100;
    const children = [
      el("strong", { text: t.direction === "out" ? `${what} → ${who}` : `${what} from ${who}` }),
      el("progress", { max: "100", value: String(pct), "aria-label": `${what}: ${pct}%` }),
      el("span", { class: "detail", text: `${t.state}${t.reason ? ` (${t.reason})` : ""} · ${bytes(t.bytes)} of ${bytes(t.total)}${t.rate && t.state === "active" ? ` · ${bytes(t.rate)}/s` : ""}${t.eta ? ` · ${Math.ceil(t.eta)} s left` : ""}` }),
      t.current && t.files > 1 ? el("span", { class: "detail current", text: `file ${t.current.index + 1} of ${t.files}: ${t.current.name}, ${bytes(t.current.bytes)} of ${bytes(t.current.size)}` }) : null,
    ];
    if (t.direction === "in" && t.state === "pending") {
      children.push(
        el("button", { type: "button", class: "primary accept", onclick: () => this.api.call("transfer.accept", { id: t.id }).then((r) => this.#render(r)).catch((err) => this.#status(err.message)), text: "Accept" }),
        el("button", { type: "button", class: "decline", onclick: () => this.api.call("transfer.decline", { id: t.id }).then((r) => this.#render(r)).catch((err) => this.#status(err.message)), text: "Decline" }),
      );
    } else if (t.direction === "in" && t.state === "done" && this.api.fileUrl) {
      // a guest's files wait on its host: saved to the phone from there, one button each
      t.names.forEach((name, index) => children.push(el("button", { type: "button", class: "save", onclick: () => this.#save(t.id, index, name), text: `Save ${name}` })));
    } else if (["offered", "pending", "active", "waiting"].includes(t.state)) {
      children.push(el("button", { type: "button", class: "cancel", onclick: () => this.api.call("transfer.cancel", { id: t.id }).catch((err) => this.#status(err.message)), text: "Cancel" }));
    }
    row.replaceChildren(...children.filter(Boolean));
    if (t.direction === "out" && ["done", "declined", "failed", "cancelled"].includes(t.state)) this.#status(`${what} → ${who}: ${t.state}${t.reason ? ` (${t.reason})` : ""}`);
  }

  async #save(transfer, index, name) {
    try {
      const link = el("a", { href: await this.api.fileUrl(transfer, index), download: name.split("/").pop() });
      document.body.append(link);
      link.click();
      link.remove();
    } catch (err) {
      this.#status(`cannot save ${name}: ${err.message}`);
    }
  }

  #renderPeers() {
    const select = $("drop-peer");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: "choose a person…" }), ...this.people.alive().map((p) => el("option", { value: p.node_id, text: p.name })));
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
  }

  #status(text, done, total) {
    $("drop-status").textContent = text;
    const bar = $("upload-progress");
    bar.hidden = total === undefined || done >= total;
    if (total) { bar.max = total; bar.value = done; }
  }
}
