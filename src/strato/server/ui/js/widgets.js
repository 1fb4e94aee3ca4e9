// Small shared pieces: the htm binding, paged lists, error boxes, capacity and progress bars, job views.
import { h } from "preact";
import { useEffect, useState, useCallback } from "preact/hooks";
import htm from "htm";
import { call, followJob, jobError } from "./api.js";

export const html = htm.bind(h);
export const PAGE_SIZE = 20;

export function ErrorBox({ error }) {
  if (!error) return null;
  return html`<div class="error" role="alert">${error.code ? `Error ${error.code}: ` : ""}${error.message || String(error)}</div>`;
}

export function Bar({ done, total, label }) {
  const pct = total ? Math.min(100, Math.round((100 * done) / total)) : 0;
  return html`<span class="bar ${pct >= 90 ? "full" : ""}" role="progressbar" aria-valuenow=${pct} aria-valuemin="0"
      aria-valuemax="100" title=${label || `${pct}%`}><div style=${`width:${pct}%`}></div></span> <span class="pct">${pct}%</span>`;
}

export function gib(bytes) {
  if (bytes === undefined || bytes === null) return "";
  return `${(bytes / 1024 ** 3).toFixed(bytes < 1024 ** 3 ? 2 : 1)} GiB`;
}

// One API list page by page, as the API pages it (page, pagesize; count is the total).
export function usePaged(command, params, key, refreshMs = 0) {
  const [page, setPage] = useState(1);
  const [state, setState] = useState({ items: null, count: 0, error: null });
  const args = JSON.stringify(params);
  const load = useCallback(() => {
    call(command, { ...params, page, pagesize: PAGE_SIZE })
      .then((a) => setState({ items: a[key] || [], count: a.count || 0, error: null }))
      .catch((error) => setState((s) => ({ ...s, error })));
  }, [command, args, page]);
  useEffect(() => {
    load();
    if (!refreshMs) return undefined;
    const t = setInterval(load, refreshMs);
    return () => clearInterval(t);
  }, [load]);
  return { ...state, page, setPage, reload: load };
}

export function Pager({ list }) {
  const pages = Math.max(1, Math.ceil(list.count / PAGE_SIZE));
  return html`<div class="pager">
    <button disabled=${list.page <= 1} onClick=${() => list.setPage(list.page - 1)}>‹ Previous</button>
    page ${list.page} of ${pages} (${list.count} in all)
    <button disabled=${list.page >= pages} onClick=${() => list.setPage(list.page + 1)}>Next ›</button>
  </div>`;
}

export function PagedTable({ command, params = {}, item, columns, refreshMs = 0, empty = "None." }) {
  const list = usePaged(command, params, item, refreshMs);
  if (list.items === null) return html`<${ErrorBox} error=${list.error} /><p class="muted">Loading…</p>`;
  return html`<${ErrorBox} error=${list.error} />
    ${list.items.length === 0 ? html`<p class="muted">${empty}</p>` : html`<table data-list=${command}>
      <thead><tr>${columns.map(([title]) => html`<th>${title}</th>`)}</tr></thead>
      <tbody>${list.items.map((row) => html`<tr data-id=${row.id || row.jobid}>${columns.map(([, cell]) => html`<td>${cell(row)}</td>`)}</tr>`)}</tbody>
    </table>`}
    <${Pager} list=${list} />`;
}

// A running or finished job: one bar per part (each disk of a move), the phase, a cancel button.
export function JobView({ job, onCancel }) {
  if (!job) return null;
  const parts = job.jobprogressparts || [];
  const status = ["running", "succeeded", "failed", "cancelled"][job.jobstatus] || "?";
  return html`<div class="panel job" data-jobid=${job.jobid} data-status=${status}>
    <div>${job.cmd ? job.cmd.split(".").pop() : "job"}: <b class="jobstatus">${status}</b>
      ${job.jobprogressphase ? html` · <span class="muted">${job.jobprogressphase}</span>` : ""}
      ${job.jobstatus === 0 && onCancel ? html` <button class="cancel" onClick=${onCancel}>Cancel</button>` : ""}</div>
    ${parts.length ? parts.map((p) => html`<div class="part">${p.name}: <${Bar} done=${p.done} total=${p.total} /></div>`)
      : html`<div class="part"><${Bar} done=${job.jobprogress || 0} total=${100} /></div>`}
    ${jobError(job) ? html`<${ErrorBox} error=${{ code: (job.jobresult || {}).errorcode, message: jobError(job) }} />` : ""}
  </div>`;
}

// Runs an API command (following its job when async) and keeps its job and error next to the button.
export function useAction(onDone) {
  const [job, setJob] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const run = async (command, params) => {
    setError(null); setJob(null); setBusy(true);
    try {
      const answer = await call(command, params);
      if (answer.jobid) {
        const end = await followJob(answer.jobid, setJob);
        if (end.jobstatus !== 1) setError({ code: (end.jobresult || {}).errorcode, message: jobError(end) });
      }
      if (onDone) onDone(answer);
    } catch (e) { setError(e); } finally { setBusy(false); }
  };
  const cancel = () => job && call("cancelAsyncJob", { jobid: job.jobid }).catch(setError);
  return { run, job, error, busy, cancel };
}

export const link = (href, text) => html`<a href=${href}>${text}</a>`;
