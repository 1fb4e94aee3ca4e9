// The one way the UI talks to Strato: CloudStack's /client/api, POST forms, JSON answers, the login
// session's key sent as the `sessionkey` parameter on every call (the cookie goes by itself).
const ENDPOINT = "/client/api";

export class ApiError extends Error {
  constructor(code, text) { super(text); this.code = code; }
}

let onExpired = () => {};
export function whenExpired(fn) { onExpired = fn; }

export function session() {
  const raw = sessionStorage.getItem("strato.session");
  return raw ? JSON.parse(raw) : null;
}

export async function call(command, params = {}) {
  const body = new URLSearchParams({ command, response: "json" });
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") body.set(k, String(v));
  const s = session();
  if (s && command !== "login") body.set("sessionkey", s.sessionkey);
  const resp = await fetch(ENDPOINT, { method: "POST", body, credentials: "same-origin" });
  let data;
  try { data = await resp.json(); } catch { throw new ApiError(resp.status, `HTTP ${resp.status} from the server`); }
  const answer = Object.values(data)[0] || {};
  if (!resp.ok || answer.errorcode) {
    const err = new ApiError(answer.errorcode || resp.status, answer.errortext || `HTTP ${resp.status}`);
    if (err.code === 401 && command !== "login") { sessionStorage.removeItem("strato.session"); onExpired(err); }
    throw err;
  }
  return answer;
}

export async function login(username, password, domain) {
  const answer = await call("login", { username, password, domain: domain || "/" });
  sessionStorage.setItem("strato.session", JSON.stringify(answer));
  return answer;
}

export async function logout() {
  try { await call("logout"); } finally { sessionStorage.removeItem("strato.session"); }
}

export function isAdmin() { const s = session(); return !!s && String(s.type) === "1"; }

// Follows an async job until its end, calling onUpdate with each queryAsyncJobResult answer.
export async function followJob(jobid, onUpdate, intervalMs = 300) {
  for (;;) {
    const job = await call("queryAsyncJobResult", { jobid });
    onUpdate(job);
    if (job.jobstatus !== 0) return job;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export function jobError(job) {
  if (job.jobstatus === 1) return null;
  const r = job.jobresult || {};
  return r.errortext || (job.jobstatus === 3 ? "cancelled" : "failed");
}
