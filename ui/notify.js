// Notifications of messages and file offers while the page is out of sight, where the
// person granted them (asked only when they press the button: browsers refuse to ask
// otherwise, and a prompt at load is a nuisance).
import { $ } from "/dom.js";

export class Notifier {
  constructor(api, people) {
    this.api = api;
    this.people = people;
  }

  start() {
    const button = $("notify");
    if (!("Notification" in window)) return;
    button.hidden = Notification.permission !== "default";
    button.addEventListener("click", async () => {
      button.hidden = (await Notification.requestPermission()) !== "default";
    });
    this.api.addEventListener("chat.message", (e) => {
      const m = e.detail;
      if (m.direction === "in" && m.kind === "text") this.#show(`${this.people.name(m.sender)}`, m.text, `#chat/${m.conversation.startsWith("group/") ? `group/${m.conversation.slice(6)}` : m.sender}`);
    });
    this.api.addEventListener("transfer.offered", (e) => {
      const t = e.detail;
      this.#show(`${t.peer_name || this.people.name(t.peer)} offers ${t.files === 1 ? t.names[0] : `${t.files} files`}`, "Open to accept or decline", "#files");
    });
  }

  #show(title, body, hash) {
    if (!document.hidden || Notification.permission !== "granted") return;
    const note = new Notification(title, { body: body.slice(0, 200), tag: hash });
    note.onclick = () => { window.focus(); location.hash = hash; note.close(); };
  }
}
