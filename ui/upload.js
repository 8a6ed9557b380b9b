// Handing a file to this page's own node (lannode/uploads.py): upload.begin, then the
// bytes as binary messages on the API connection, 512 KiB at a time, held back while
// the WebSocket's buffer is full. A reload resumes: the upload id is kept in
// localStorage under the file's name, size and date, and the node says how much it has.
const CHUNK = 512 * 1024; // under the API's 1 MiB message limit
const HIGH_WATER = 8 * 1024 * 1024; // bytes the page lets the WebSocket buffer
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Uploader extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.waiters = new Map(); // upload id -> resolve, once the node has the whole file
  }

  start() {
    this.api.subscribe("upload.*");
    this.api.addEventListener("upload.progress", (e) => {
      if (e.detail.complete) this.waiters.get(e.detail.upload)?.(e.detail);
    });
    this.api.addEventListener("upload.error", (e) => this.dispatchEvent(new CustomEvent("error", { detail: e.detail.error })));
  }

  // The upload id, once the node has all of ``file``; progress(bytes the node has or will have).
  async upload(file, progress = () => {}) {
    const key = `lannode.upload:${file.name}:${file.size}:${file.lastModified}`;
    const record = await this.api.call("upload.begin", { name: file.name, size: file.size, resume: localStorage.getItem(key) || undefined });
    localStorage.setItem(key, record.upload);
    const whole = record.complete ? Promise.resolve(record) : new Promise((resolve) => this.waiters.set(record.upload, resolve));
    const id = Uint8Array.from(record.upload.match(/../g), (h) => parseInt(h, 16));
    let offset = record.offset;
    progress(offset);
    while (offset < file.size) {
      while (this.api.bufferedAmount > HIGH_WATER) await sleep(4);
      const piece = new Uint8Array(await file.slice(offset, offset + CHUNK).arrayBuffer());
      const message = new Uint8Array(24 + piece.length);
      message.set(id, 0);
      new DataView(message.buffer).setBigUint64(16, BigInt(offset));
      message.set(piece, 24);
      this.api.sendBinary(message);
      offset += piece.length;
      progress(offset - this.api.bufferedAmount);
    }
    await whole;
    this.waiters.delete(record.upload);
    localStorage.removeItem(key);
    progress(file.size);
    return record.upload;
  }
}
