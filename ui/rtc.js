// Browser-to-browser WebRTC, with the daemons carrying the signaling (rtc.* in the API).
//
// This page registers as a "front" of its node. A Session is one RTCPeerConnection
// with one front of a peer node; it always carries a data channel ("lannode",
// negotiated as id 0 by both ends, so neither has to create it first) and later
// media. Offers and answers follow the "perfect negotiation" pattern: the front with
// the smaller id is polite and rolls back its own offer when two cross. The DTLS
// fingerprints inside the SDP travel over the daemons' authenticated links, so the
// channel is authenticated end to end.
//
// Events: "session" (a session's state changed: detail {node, front, state}),
// "message" (detail {node, front, data} for each JSON message on a data channel).

const ICE = { iceServers: [] }; // a LAN with no server: host candidates only
const STUCK_CHECK_MS = 1000;
const STUCK_CHECKS = 4; // seconds of "new" after a finished negotiation before an ICE restart
const CONNECT_WITHIN_MS = 15000; // a session not connected by then is given up and opened afresh

export class Session {
  constructor(mesh, node, front) {
    this.mesh = mesh;
    this.node = node;
    this.front = front;
    this.state = "connecting";
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingAnswer = false; // perfect negotiation's isSettingRemoteAnswerPending
    this.signals = Promise.resolve(); // the chain that keeps signals in order
    this.pc = new RTCPeerConnection(ICE);
    this.channel = this.pc.createDataChannel("lannode", { negotiated: true, id: 0, ordered: true });
    this.channel.binaryType = "arraybuffer";
    this.channel.onopen = () => this.#setState("open");
    this.channel.onclose = () => this.#setState("closed");
    this.channel.onmessage = (e) => {
      if (typeof e.data !== "string") return this.mesh.dispatchEvent(new CustomEvent("binary", { detail: { session: this, data: e.data } }));
      let data;
      try { data = JSON.parse(e.data); } catch { return; }
      this.mesh.dispatchEvent(new CustomEvent("message", { detail: { node: this.node, front: this.front, session: this, data } }));
    };
    this.pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await this.pc.setLocalDescription();
        await this.signal("offer", this.pc.localDescription.toJSON());
      } catch (err) {
        this.#fail(err);
      } finally {
        this.makingOffer = false;
      }
    };
    this.pc.onicecandidate = ({ candidate }) => {
      if (candidate) this.signal("candidate", candidate.toJSON()).catch(() => {});
    };
    this.pc.onconnectionstatechange = () => {
      const s = this.pc.connectionState;
      if (s === "connected") this.connectedOnce = true;
      if (s === "failed") {
        this.#setState("failed");
        this.pc.restartIce(); // a network blip: try again with fresh ICE credentials
      } else if (s === "closed") this.#setState("closed");
    };
    // A session whose offer and answer went through but whose ICE never started stays
    // "new" for good, and "failed" never comes. Seen in 3-page rooms on Chromium 156: one
    // side's gathering stalls with no candidate at all, and neither restartIce() on it nor
    // a restart from the other side moves it (its description never changes again). Only
    // a new RTCPeerConnection mends it: the stalled side hangs up, and both open afresh
    // (a room re-adds the front on its next poll).
    this.stuck = 0;
    this.created = Date.now();
    this.connectedOnce = false;
    this.watch = setInterval(() => {
      const idle = this.pc.connectionState === "new" && this.pc.signalingState === "stable" && this.pc.remoteDescription;
      this.stuck = idle ? this.stuck + 1 : 0;
      // the side whose gathering stalled (no local candidate at all) restarts: a restart by
      // the other side does not make the stalled one gather again
      if (this.stuck >= STUCK_CHECKS && this.pc.iceGatheringState !== "complete") {
        console.warn("lannode rtc: ICE never started with", this.front, "; opening a new session");
        this.close(true);
      } else if (!this.connectedOnce && Date.now() - this.created > CONNECT_WITHIN_MS) {
        // whatever else stalled (a negotiation that never finished, ICE stuck "connecting"):
        // a session that never connected is given up; a room opens a new one on its next poll
        console.warn("lannode rtc: no connection with", this.front, "after", CONNECT_WITHIN_MS, "ms; opening a new session");
        this.close(true);
      }
    }, STUCK_CHECK_MS);
    this.pc.ontrack = (e) => this.mesh.dispatchEvent(new CustomEvent("track", { detail: { session: this, track: e.track, streams: e.streams } }));
  }

  get polite() { return this.mesh.front < this.front; }
  get open() { return this.channel.readyState === "open"; }

  signal(kind, data) {
    return this.mesh.api.call("rtc.signal", { peer: this.node, kind, data, to_front: this.front });
  }

  // Signals are handled one at a time, in the order they came: an offer that arrives
  // while the answer before it is still being applied must see the state that answer
  // leaves (stable), or the impolite side takes it for a collision, ignores it, and the
  // other side's tracks are never negotiated (a room page decoding nothing from one peer).
  onSignal(kind, data) {
    const handled = this.signals.then(() => this.#handle(kind, data));
    this.signals = handled.catch(() => {});
    return handled;
  }

  async #handle(kind, data) {
    if (kind === "offer" || kind === "answer") {
      const ready = !this.makingOffer && (this.pc.signalingState === "stable" || this.settingAnswer);
      const collision = kind === "offer" && !ready;
      this.ignoreOffer = !this.polite && collision;
      if (this.ignoreOffer) return;
      this.settingAnswer = kind === "answer";
      try {
        await this.pc.setRemoteDescription(data);
      } finally {
        this.settingAnswer = false;
      }
      if (kind === "offer") {
        await this.pc.setLocalDescription();
        await this.signal("answer", this.pc.localDescription.toJSON());
      }
    } else if (kind === "candidate") {
      try {
        await this.pc.addIceCandidate(data);
      } catch (err) {
        if (!this.ignoreOffer) throw err;
      }
    } else if (kind === "hangup") {
      this.close(false);
    }
  }

  send(message) {
    if (!this.open) return false;
    this.channel.send(typeof message === "string" ? message : JSON.stringify(message));
    return true;
  }

  close(tell = true) {
    clearInterval(this.watch);
    if (tell) this.signal("hangup", {}).catch(() => {});
    this.pc.close();
    this.#setState("closed");
    this.mesh.sessions.delete(this.front);
  }

  #fail(err) {
    console.warn("lannode rtc:", err);
    this.#setState("failed");
  }

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.mesh.dispatchEvent(new CustomEvent("session", { detail: { node: this.node, front: this.front, state, session: this } }));
  }
}

export class Mesh extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.front = null;
    this.sessions = new Map(); // remote front id -> Session
    this.available = typeof RTCPeerConnection === "function";
  }

  async start() {
    this.api.addEventListener("rtc.signal", (e) => this.#onSignal(e.detail).catch((err) => console.warn("lannode rtc:", err)));
    this.api.addEventListener("state", (e) => { if (e.detail.state === "up") this.#register(); });
    await this.api.subscribe("rtc.*");
    if (this.api.state === "up") await this.#register();
  }

  async #register() {
    this.front = (await this.api.call("rtc.register")).front;
    document.documentElement.dataset.front = this.front;
  }

  // Open sessions with every front the peer node has open; false if it has none.
  async connect(node) {
    if (!this.available || !this.front) return false;
    let reply;
    try {
      reply = await this.api.call("rtc.signal", { peer: node, kind: "hello", data: {} });
    } catch {
      return false; // the peer is away, or nobody has lannode open there: the daemons carry everything
    }
    for (const front of reply.delivered_to) this.#session(node, front);
    return reply.delivered_to.length > 0;
  }

  sessionsWith(node) {
    return [...this.sessions.values()].filter((s) => s.node === node);
  }

  openSessionsWith(node) {
    return this.sessionsWith(node).filter((s) => s.open);
  }

  // The session with one front of a peer node, opened if need be (meeting rooms know the fronts).
  sessionTo(node, front) {
    return this.#session(node, front);
  }

  #session(node, front) {
    let session = this.sessions.get(front);
    if (!session || session.pc.connectionState === "closed") {
      session = new Session(this, node, front);
      this.sessions.set(front, session);
    }
    return session;
  }

  async #onSignal(event) {
    if (!event.from_front) return;
    if (event.kind === "hello") return; // they will offer; answering is enough
    if (!this.available) {
      this.api.call("rtc.signal", { peer: event.from, kind: "hangup", data: { reason: "no WebRTC here" }, to_front: event.from_front }).catch(() => {});
      return;
    }
    if (event.kind === "hangup") {
      this.sessions.get(event.from_front)?.close(false);
      return;
    }
    await this.#session(event.from, event.from_front).onSignal(event.kind, event.data);
  }
}
