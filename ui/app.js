// The node's page: who is around, chat, and how this node is doing, live from the API.
// The same page is a guest's (a phone's) when the host's guest door serves it: then it
// talks to the door (GuestApi) and shows what guests can do so far.
import { NodeApi } from "/api.js";
import { GuestApi } from "/guestapi.js";
import { Calls } from "/calls.js";
import { Chat } from "/chat.js";
import { $ } from "/dom.js";
import { DirectDrop } from "/directdrop.js";
import { Drive } from "/drive.js";
import { Files } from "/files.js";
import { Mail } from "/mail.js";
import { People } from "/people.js";
import { Mesh } from "/rtc.js";
import { Uploader } from "/upload.js";
import { Invites } from "/invites.js";
import { Notifier } from "/notify.js";

const config = await fetch("/config.json", { cache: "no-store" }).then((r) => (r.ok ? r.json() : Promise.reject(new Error(`config.json: ${r.status}`)))).catch((err) => ({ error: err.message }));
const guest = config.guest === true;
document.body.dataset.mode = guest ? "guest" : "node";
const api = guest ? new GuestApi(config) : new NodeApi(config);
const people = new People(api);
const mesh = new Mesh(api);
const chat = new Chat(api, mesh, people);
const calls = new Calls(api, mesh, people);
const uploader = new Uploader(api);
const direct = new DirectDrop(mesh, people);
const files = new Files(api, people, uploader, direct);
const mail = new Mail(api, uploader);
const drive = new Drive(api, people, uploader, mail);
const invites = new Invites(api);
const notifier = new Notifier(api, people);
if (guest) chat.verify = GuestApi.verifyMessage;
let status = null;
let statusAt = 0;

function duration(seconds) {
  seconds = Math.floor(seconds);
  const d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return (d ? `${d}d ` : "") + (d || h ? `${h}h ` : "") + (d || h || m ? `${m}m ` : "") + `${s}s`;
}

function renderUptime() {
  if (status) $("uptime").textContent = duration(status.uptime_s + (performance.now() - statusAt) / 1000);
}

function render() {
  $("node-name").textContent = status.name;
  document.title = `${status.name} · lannode`;
  $("node-id").textContent = status.node_id;
  $("version").textContent = `${status.version} (API v${status.api_version})`;
  $("interface").textContent = status.interface;
  $("home").textContent = status.home;
  renderUptime();
  const rows = status.plugins.map((p) => {
    const tr = document.createElement("tr");
    for (const value of [p.name, p.state, String(p.restarts), p.url || "—"]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.append(td);
    }
    return tr;
  });
  $("plugins").replaceChildren(...rows);
}

async function refresh() {
  if (guest) {
    const hello = api.hello;
    if (!hello) return;
    $("node-name").textContent = hello.name;
    document.title = `${hello.name} · lannode`;
    $("node-id").textContent = `${hello.node_id} · a guest of ${hello.host_name}`;
    return;
  }
  try {
    status = await api.call("node.status");
    statusAt = performance.now();
    render();
  } catch (err) {
    /* shown by the connection line */
  }
}

// #people, #chat, #chat/NODE_ID, #chat/group/GROUP_ID, #calls, #files, #drive, #mail, #node
function route() {
  const [tab, ...rest] = (location.hash.slice(1) || "people").split("/");
  const tabs = guest ? ["people", "chat", "calls", "files", "drive", "mail"] : ["people", "chat", "calls", "files", "drive", "mail", "node"];
  const known = tabs.includes(tab) ? tab : "people";
  for (const section of document.querySelectorAll("[data-section]")) section.hidden = section.dataset.section !== known;
  for (const link of document.querySelectorAll("nav a")) link.toggleAttribute("aria-current", link.dataset.tab === known);
  document.querySelector("nav a[aria-current]")?.setAttribute("aria-current", "page");
  if (known === "drive") drive.refresh();
  if (known === "mail") mail.refresh();
  if (known === "chat" && rest.length && api.state === "up") {
    chat.open(rest[0] === "group" ? { group: rest[1] } : { peer: rest[0] });
  }
}

api.addEventListener("state", (e) => {
  const line = $("connection");
  line.dataset.state = e.detail.state;
  const node = guest ? config.host_name : "the node";
  line.textContent = e.detail.state === "up" ? `connected to ${node}` : e.detail.state === "signing-in" ? `joining ${node}` : `${node} does not answer; retrying…`;
  if (e.detail.state === "up") {
    refresh();
    if (!chat.current) route();
  }
});
api.addEventListener("plugin.state", refresh);
api.subscribe("plugin.*", "node.*");
api.addEventListener("node.stopping", () => { $("connection").textContent = "the node is stopping"; });
window.addEventListener("hashchange", route);

people.start();
chat.start();
notifier.start();
calls.start();
mesh.start();
direct.start();
files.start();
mail.start();
drive.start();
if (!guest) invites.start();
$("conversation-mail").addEventListener("click", () => {
  const c = chat.current;
  const name = c && (c.group ? c.name : people.name(c.peer)); // the name now: the page may have opened before the people list came
  if (c) mail.compose({ kind: "transcript", value: c.group ? `#${c.group}` : c.peer, label: `chat transcript: ${name}`, subject: `Chat with ${name}` });
});
people.addEventListener("call", (e) => { location.hash = "#calls"; calls.callPeer(e.detail); });
route();
if (!guest) {
  setInterval(renderUptime, 1000);
  setInterval(refresh, 5000);
}
api.start().catch((err) => { $("connection").textContent = `cannot reach this page's server: ${err.message}`; });
window.lannode = { api, people, mesh, chat, calls, files, drive, mail, invites }; // for the browser's console, and the tests
