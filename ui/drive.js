// The shared drive: every file's health and where its fragments live, upload with
// progress (the file goes to this node, which encrypts, codes and places it), download
// into this node's downloads folder, share and delete.
import { $, bytes, el } from "/dom.js";

const REFRESH_MS = 3000;

export class Drive {
  constructor(api, people, uploader, mail) {
    this.api = api;
    this.mail = mail;
    this.people = people;
    this.uploader = uploader;
    this.files = [];
  }

  start() {
    this.api.subscribe("drive.*");
    this.api.addEventListener("drive.progress", (e) => this.#progress(e.detail));
    this.api.addEventListener("state", (e) => { if (e.detail.state === "up") this.refresh(); });
    $("drive-input").addEventListener("change", (e) => this.put([...e.target.files]).finally(() => { e.target.value = ""; }));
    setInterval(() => { if (!$("tab-drive").hidden) this.refresh(); }, REFRESH_MS);
  }

  async refresh() {
    try {
      this.files = await this.api.call("drive.ls");
    } catch { return; }
    this.render();
  }

  render() {
    $("drive-files").replaceChildren(...this.files.map((f) => {
      const healthy = f.live >= f.k + f.m ? "full" : f.live >= f.k ? "degraded" : "unreadable";
      return el("li", { class: "drive-file", dataset: { id: f.id, health: healthy, readable: f.readable ? "1" : "" } },
        el("div", { class: "drive-name" },
          el("strong", { text: f.name || "(not shared with this node)" }),
          el("span", { class: "detail", text: `${bytes(f.size)} · ${f.k} + ${f.m} · owner ${f.owner_name || f.owner.slice(0, 8)}` })),
        el("span", { class: "health", dataset: { health: healthy }, title: "fragments on alive nodes, of k + m", text: f.health }),
        el("ol", { class: "fragments", "aria-label": `where the ${f.k + f.m} fragments live` },
          ...f.holders.map((h) => el("li", {
            class: "fragment", dataset: { alive: h.alive ? "1" : "", parity: h.index >= f.k ? "1" : "" },
            title: `fragment ${h.index + 1} (${h.index < f.k ? "data" : "parity"}) on ${h.name || h.node} — ${h.alive ? "alive" : "not reachable"}`,
          }, el("span", { class: "visually-hidden", text: `fragment ${h.index + 1} on ${h.name || h.node}, ${h.alive ? "alive" : "not reachable"}` }), (h.name || h.node).slice(0, 3)))),
        f.readable ? el("button", { type: "button", class: "download", "aria-label": `Download ${f.name}`, onclick: () => this.get(f), text: "Download" }) : null,
        f.readable && this.mail ? el("button", { type: "button", class: "mail", "aria-label": `Mail ${f.name}`, onclick: () => this.mail.compose({ kind: "drive", value: f.id, label: `drive file: ${f.name} (${bytes(f.size)})`, subject: f.name }), text: "Mail…" }) : null,
        f.readable ? el("button", { type: "button", class: "share", "aria-label": `Share ${f.name}`, onclick: () => this.share(f), text: "Share…" }) : null,
        f.readable ? el("button", { type: "button", class: "remove danger", "aria-label": `Delete ${f.name}`, onclick: () => this.rm(f), text: "Delete" }) : null,
      );
    }));
    $("drive-empty").hidden = this.files.length > 0;
  }

  async put(files) {
    for (const file of files) {
      try {
        this.#status(`handing ${file.name} to this node…`, 0, file.size);
        const upload = await this.uploader.upload(file, (done) => this.#status(`handing ${file.name} to this node: ${bytes(done)} of ${bytes(file.size)}`, done, file.size));
        const op = crypto.randomUUID();
        this.#status(`encrypting, coding and placing ${file.name}…`);
        const share = $("drive-share").value.split(",").map((s) => s.trim()).filter(Boolean);
        const result = await this.api.call("drive.put", { upload, op, share, ...(this.#fewer() ? { allow_fewer: true } : {}) });
        this.#status(`${file.name} is on the drive: ${result.health} fragments placed`);
      } catch (err) {
        this.#status(`${file.name}: ${err.message}`);
      }
    }
    this.refresh();
  }

  async get(f) {
    const op = crypto.randomUUID();
    this.#status(`fetching ${f.name}…`, 0, f.size);
    try {
      const result = await this.api.call("drive.get", { file: f.id, to: "downloads", op });
      this.#status(`saved ${f.name} to ${result.path}${result.failed.length ? ` (read around ${result.failed.length} bad fragment(s))` : ""}`);
      $("drive-status").dataset.saved = result.path;
    } catch (err) {
      this.#status(`${f.name}: ${err.message}`);
    }
  }

  async share(f) {
    const names = prompt(`Share ${f.name} with whom? Names, node ids or #groups, separated by commas`);
    if (!names) return;
    try {
      const result = await this.api.call("drive.share", { file: f.id, with: names.split(",").map((s) => s.trim()).filter(Boolean) });
      this.#status(`${f.name} shared with ${result.shared_with.map((n) => n.name).join(", ")}`);
    } catch (err) {
      this.#status(`${f.name}: ${err.message}`);
    }
  }

  async rm(f) {
    if (!confirm(`Delete ${f.name} from the drive, on every node?`)) return;
    try {
      await this.api.call("drive.rm", { file: f.id });
      this.#status(`${f.name} deleted; its holders drop their fragments`);
    } catch (err) {
      this.#status(`${f.name}: ${err.message}`);
    }
    this.refresh();
  }

  #fewer() {
    return $("drive-fewer").checked;
  }

  #progress(p) {
    if (p.done) return;
    const verb = p.kind === "put" ? "placing" : p.kind === "get" ? "fetching" : p.kind;
    this.#status(`${verb} ${p.name}: ${bytes(p.bytes)} of ${bytes(p.total)} (${bytes(p.rate)}/s)`, p.bytes, p.total);
  }

  #status(text, done, total) {
    $("drive-status").textContent = text;
    const bar = $("drive-progress");
    bar.hidden = total === undefined || done >= total;
    if (total) { bar.max = total; bar.value = done; }
  }
}
