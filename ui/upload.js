// Handing a file to this page's own node (lannode/uploads.py): upload.begin over the
// API, then the bytes as the body of one PUT to the API's port (Chromium streams a
// file body about 3x faster than it sends WebSocket messages). A dropped request, or a
// reload, resumes: the upload id is kept in localStorage under the file's name, size
// and date, and the node says how much it has.
const ATTEMPTS = 5;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Uploader {
  constructor(api) {
    this.api = api;
  }

  // The upload id, once the node has all of ``file``; progress(bytes the node has or will have).
  async upload(file, progress = () => {}) {
    const name = file.webkitRelativePath || file.name; // a picked folder's files keep their place in it
    const key = `lannode.upload:${name}:${file.size}:${file.lastModified}`;
    const record = await this.api.call("upload.begin", { name, size: file.size, resume: localStorage.getItem(key) || undefined });
    localStorage.setItem(key, record.upload);
    let offset = record.offset;
    progress(offset);
    for (let attempt = 1; offset < file.size; attempt++) {
      try {
        offset = (await this.#put(record.upload, file, offset, progress)).offset;
      } catch (err) {
        if (attempt >= ATTEMPTS) throw err;
        await sleep(250 * attempt);
        offset = (await this.api.call("upload.status", { upload: record.upload })).offset;
      }
    }
    localStorage.removeItem(key);
    progress(file.size);
    return record.upload;
  }

  // One PUT of the file from ``offset``; resolves with the node's record of the upload.
  // A guest's page hands it to its host in signed pieces instead (GuestApi.putUpload).
  #put(upload, file, offset, progress) {
    if (this.api.putUpload) return this.api.putUpload(upload, file, offset, progress);
    const url = this.api.config.api_url.replace(/^ws:/, "http:") + `/uploads/${upload}`;
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", url);
      xhr.setRequestHeader("Authorization", `Bearer ${this.api.config.token}`);
      xhr.setRequestHeader("X-Lannode-Offset", String(offset));
      xhr.responseType = "json";
      xhr.upload.onprogress = (e) => progress(offset + e.loaded);
      xhr.onload = () => (xhr.status === 200 ? resolve(xhr.response) : reject(new Error(xhr.response?.error || `upload refused (${xhr.status})`)));
      xhr.onerror = () => reject(new Error("the upload connection to the node failed"));
      xhr.send(file.slice(offset));
    });
  }
}
