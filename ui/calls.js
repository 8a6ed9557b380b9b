// Calls: 1:1 audio and video, and meeting rooms as a full mesh of up to MAX_ROOM pages.
//
// Media rides on the same RTCPeerConnection as each session's data channel (rtc.js);
// adding or removing tracks renegotiates through the daemons' signaling. A 1:1 call is
// an invitation over the data channel ({t:"call"}), answered {t:"call-accept"} or
// {t:"call-decline"}. A room is kept by the nodes (room.join / room.members, replicated
// in their store); every page in it opens a session with every other page in it.
import { $, el } from "/dom.js";

export const MAX_ROOM = 6;
const ROOM_POLL_MS = 1500;

export class Calls {
  constructor(api, mesh, people) {
    this.api = api;
    this.mesh = mesh;
    this.people = people;
    this.call = null; // {id, room?, peer?, stream, fronts: Set of remote fronts in the call, screen?}
    this.invites = new Map(); // call id -> {node, front}
    this.tiles = new Map(); // remote front -> <figure>
    this.early = new Map(); // remote front -> a stream that arrived before its tile (a caller that offers media with the ring)
  }

  start() {
    this.mesh.addEventListener("message", (e) => this.#onMessage(e.detail));
    this.mesh.addEventListener("track", (e) => this.#onTrack(e.detail));
    this.mesh.addEventListener("session", (e) => {
      if (e.detail.state !== "closed") return;
      this.early.delete(e.detail.front);
      if (this.call) this.#dropTile(e.detail.front);
      if (this.call?.room) this.call.fronts.delete(e.detail.front); // still in the room: the next poll opens a new session
    });
    $("room-form").addEventListener("submit", (e) => { e.preventDefault(); this.joinRoom($("room-name").value.trim()); });
    $("call-mute").addEventListener("click", () => this.#toggle("audio", "call-mute", "Unmute", "Mute"));
    $("call-camera").addEventListener("click", () => this.#toggle("video", "call-camera", "Camera on", "Camera off"));
    $("call-screen").addEventListener("click", () => this.shareScreen());
    $("call-leave").addEventListener("click", () => this.leave());
  }

  // -- starting -------------------------------------------------------------------------------
  async callPeer(node) {
    if (this.call) return this.#error("leave the current call first");
    const id = crypto.randomUUID();
    if (!(await this.mesh.connect(node))) return this.#error(`${this.people.name(node)} has no lannode page open, so there is nobody to ring`);
    const sessions = await this.#opened(node);
    if (!sessions.length) return this.#error(`no direct connection to ${this.people.name(node)} could open`);
    if (!(await this.#begin({ id, peer: node }))) return;
    for (const s of sessions) s.send({ t: "call", id, name: this.people.me });
    this.#status(`ringing ${this.people.name(node)}…`);
  }

  async joinRoom(room) {
    if (this.call) return this.#error("leave the current call first");
    if (!room) return;
    let members;
    try {
      members = (await this.api.call("room.members", { room })).members;
    } catch (err) {
      return this.#error(err.message);
    }
    const others = members.filter((m) => m.node_id !== this.api.hello?.node_id);
    if (others.length >= MAX_ROOM) return this.#error(`room ${room} is full: a mesh call holds at most ${MAX_ROOM} people`);
    if (!(await this.#begin({ id: `room:${room}`, room }))) return;
    await this.api.call("room.join", { room }).catch((err) => this.#error(err.message));
    this.#status(`in room ${room}`);
    this.#pollRoom();
  }

  async #begin(call) {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
    } catch (err) {
      this.#error(`no camera or microphone: ${err.message}`);
      return false;
    }
    this.call = { ...call, stream, fronts: new Set() };
    if (location.hash !== "#calls") location.hash = "#calls"; // the call's tiles and controls
    const local = $("local-video");
    local.srcObject = stream;
    $("call").hidden = false;
    $("call-title").textContent = call.room ? `Room ${call.room}` : `Call with ${this.people.name(call.peer)}`;
    return true;
  }

  async #pollRoom() {
    const call = this.call;
    while (this.call === call) {
      try {
        const { members } = await this.api.call("room.members", { room: call.room });
        const fronts = new Set();
        for (const m of members) {
          if (m.node_id === this.api.hello?.node_id) continue;
          for (const front of m.fronts) {
            fronts.add(front);
            if (!call.fronts.has(front)) this.#addFront(m.node_id, front);
          }
        }
        for (const front of [...call.fronts]) if (!fronts.has(front)) this.#removeFront(front);
      } catch { /* the node is restarting; try again */ }
      await new Promise((r) => setTimeout(r, ROOM_POLL_MS));
    }
  }

  // A page in the room: open (or reuse) the session and send it our media.
  async #addFront(node, front) {
    const call = this.call;
    call.fronts.add(front);
    const session = this.mesh.sessionTo(node, front);
    this.#attach(session);
    this.#tile(front, node);
  }

  #removeFront(front) {
    this.call.fronts.delete(front);
    const session = this.mesh.sessions.get(front);
    if (session) this.#detach(session);
    this.#dropTile(front);
  }

  #attach(session) {
    if (session.senders?.length) return;
    session.senders = this.call.stream.getTracks().map((t) => session.pc.addTrack(t, this.call.stream));
  }

  #detach(session) {
    for (const sender of session.senders || []) {
      try { session.pc.removeTrack(sender); } catch { /* closed already */ }
    }
    session.senders = [];
  }

  // -- messages from other pages --------------------------------------------------------------
  #onMessage({ node, front, session, data }) {
    if (data.t === "call") {
      if (this.call) return session.send({ t: "call-decline", id: data.id, reason: "busy" });
      this.invites.set(data.id, { node, front, session });
      this.#ring(data.id, node);
    } else if (data.t === "call-accept" && this.call?.id === data.id) {
      this.call.fronts.add(front);
      this.#attach(session);
      this.#tile(front, node);
      this.#status(`in a call with ${this.people.name(node)}`);
    } else if (data.t === "call-decline" && this.call?.id === data.id) {
      this.#status(`${this.people.name(node)} declined${data.reason ? ` (${data.reason})` : ""}`);
      this.#end();
    } else if (data.t === "call-leave" && this.call?.fronts.has(front)) {
      this.#removeFront(front);
      if (!this.call.room && this.call.fronts.size === 0) {
        this.#status(`${this.people.name(node)} hung up`);
        this.#end();
      }
    } else if (data.t === "call-cancel") {
      this.invites.delete(data.id);
      $("incoming").hidden = true;
    }
  }

  #ring(id, node) {
    const box = $("incoming");
    box.replaceChildren(
      el("p", { text: `${this.people.name(node)} is calling` }),
      el("button", { type: "button", class: "primary", id: "accept-call", onclick: () => this.accept(id), text: "Accept" }),
      el("button", { type: "button", id: "decline-call", onclick: () => this.decline(id), text: "Decline" }),
    );
    box.hidden = false;
    box.querySelector("#accept-call").focus();
  }

  async accept(id) {
    const invite = this.invites.get(id);
    $("incoming").hidden = true;
    if (!invite) return;
    this.invites.delete(id);
    if (!(await this.#begin({ id, peer: invite.node }))) {
      invite.session.send({ t: "call-decline", id, reason: "no camera or microphone" });
      return;
    }
    this.call.fronts.add(invite.front);
    this.#attach(invite.session);
    this.#tile(invite.front, invite.node);
    invite.session.send({ t: "call-accept", id });
    this.#status(`in a call with ${this.people.name(invite.node)}`);
  }

  decline(id) {
    const invite = this.invites.get(id);
    $("incoming").hidden = true;
    this.invites.delete(id);
    invite?.session.send({ t: "call-decline", id });
  }

  #onTrack({ session, track, streams }) {
    const stream = streams[0] || new MediaStream([track]);
    const tile = this.tiles.get(session.front) || (this.call ? this.#tile(session.front, session.node) : null);
    if (!tile) {
      this.early.set(session.front, stream); // shown if the call is accepted
      return;
    }
    tile.querySelector("video").srcObject = stream;
  }

  // -- during a call --------------------------------------------------------------------------
  #toggle(kind, buttonId, offText, onText) {
    if (!this.call) return;
    const tracks = kind === "audio" ? this.call.stream.getAudioTracks() : this.call.stream.getVideoTracks();
    const enabled = !tracks.every((t) => !t.enabled);
    tracks.forEach((t) => { t.enabled = !enabled; });
    const button = $(buttonId);
    button.textContent = enabled ? offText : onText;
    button.setAttribute("aria-pressed", String(enabled));
  }

  async shareScreen() {
    if (!this.call) return;
    const camera = this.call.stream.getVideoTracks()[0];
    let screenTrack;
    if (this.call.screen) {
      screenTrack = camera;
      this.call.screen.stop();
      this.call.screen = null;
    } else {
      try {
        const screen = await navigator.mediaDevices.getDisplayMedia({ video: true });
        screenTrack = screen.getVideoTracks()[0];
        this.call.screen = screenTrack;
        screenTrack.onended = () => { if (this.call?.screen === screenTrack) this.shareScreen(); };
      } catch (err) {
        return this.#error(`screen sharing did not start: ${err.message}`);
      }
    }
    for (const session of this.mesh.sessions.values()) {
      for (const sender of session.senders || []) if (sender.track?.kind === "video" || sender.track === null) await sender.replaceTrack(screenTrack);
    }
    $("local-video").srcObject = new MediaStream([screenTrack, ...this.call.stream.getAudioTracks()]);
    $("call-screen").textContent = this.call.screen ? "Stop sharing" : "Share screen";
  }

  async leave() {
    if (!this.call) return;
    const call = this.call;
    for (const front of call.fronts) this.mesh.sessions.get(front)?.send({ t: "call-leave", id: call.id });
    if (call.room) await this.api.call("room.leave", { room: call.room }).catch(() => {});
    for (const front of [...call.fronts]) this.#removeFront(front);
    this.#status("call ended");
    this.#end();
  }

  #end() {
    const call = this.call;
    if (!call) return;
    for (const front of [...call.fronts]) this.#removeFront(front);
    call.stream.getTracks().forEach((t) => t.stop());
    call.screen?.stop();
    this.call = null;
    $("local-video").srcObject = null;
    $("call").hidden = true;
  }

  // Per remote page: frames decoded so far, from the receiver's own statistics.
  async stats() {
    const result = {};
    for (const front of this.call?.fronts || []) {
      const session = this.mesh.sessions.get(front);
      if (!session) continue;
      let frames = 0;
      (await session.pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0; });
      result[front] = frames;
    }
    return result;
  }

  #tile(front, node) {
    let tile = this.tiles.get(front);
    if (!tile) {
      tile = el("figure", { class: "tile", dataset: { front, node } },
        el("video", { autoplay: true, playsinline: true, "aria-label": `video of ${this.people.name(node)}` }),
        el("figcaption", { text: this.people.name(node) }));
      this.tiles.set(front, tile);
      $("tiles").append(tile);
      const early = this.early.get(front);
      if (early) tile.querySelector("video").srcObject = early;
    }
    return tile;
  }

  #dropTile(front) {
    this.tiles.get(front)?.remove();
    this.tiles.delete(front);
    this.early.delete(front);
  }

  #status(text) { $("call-status").textContent = text; }
  #error(text) { $("call-status").textContent = text; return false; }

  async #opened(node, ms = 10000) {
    const until = performance.now() + ms;
    while (performance.now() < until) {
      const open = this.mesh.openSessionsWith(node);
      if (open.length) return open;
      await new Promise((r) => setTimeout(r, 100));
    }
    return [];
  }
}
