// The task log and events, the admins' inventory (hosts, zones, templates, accounts) and the console.
import { useEffect, useRef, useState } from "preact/hooks";
import RFB from "novnc";
import { call, isAdmin, jobError } from "./api.js";
import { html, PagedTable, ErrorBox, Bar, link } from "./widgets.js";

const STATUS = ["running", "succeeded", "failed", "cancelled"];

export function Jobs() {
  return html`<h2>Tasks</h2>
    <${PagedTable} command="listAsyncJobs" item="asyncjobs" refreshMs=${2000} params=${{ listall: isAdmin() || undefined }} columns=${[
      ["Started", (j) => j.created], ["Command", (j) => (j.cmd || "").split(".").pop()],
      ["Object", (j) => j.jobinstancetype ? `${j.jobinstancetype} ${j.jobinstanceid || ""}` : ""],
      ["Status", (j) => STATUS[j.jobstatus]],
      ["Progress", (j) => html`<${Bar} done=${j.jobprogress || 0} total=${100} /> ${j.jobprogressphase || ""}`],
      ["Result", (j) => (j.jobstatus === 0 ? "" : jobError(j) ? html`<span class="error">${jobError(j)}</span>` : "done")],
    ]} />`;
}

export function Events() {
  return html`<h2>Events</h2>
    <${PagedTable} command="listEvents" item="event" params=${{ listall: isAdmin() || undefined }} columns=${[
      ["Time", (e) => e.created], ["Level", (e) => e.level], ["Type", (e) => e.type],
      ["Description", (e) => e.description], ["Account", (e) => e.account || ""],
    ]} />`;
}

export function Hosts() {
  return html`<h2>Hosts</h2><${PagedTable} command="listHosts" item="host" columns=${[
    ["Name", (h) => h.name], ["State", (h) => h.state], ["Resource state", (h) => h.resourcestate],
    ["Hypervisor", (h) => h.hypervisor], ["Cluster", (h) => h.clustername], ["Zone", (h) => h.zonename],
  ]} />`;
}

export function Zones() {
  return html`<h2>Zones</h2><${PagedTable} command="listZones" item="zone" columns=${[
    ["Name", (z) => z.name], ["State", (z) => z.allocationstate], ["Network", (z) => z.networktype],
  ]} />`;
}

export function Templates() {
  return html`<h2>Templates</h2><${PagedTable} command="listTemplates" item="template"
    params=${{ templatefilter: isAdmin() ? "all" : "executable" }} columns=${[
      ["Name", (t) => t.name], ["Ready", (t) => (t.isready ? "yes" : "no")], ["Size", (t) => t.size ? `${(t.size / 1024 ** 3).toFixed(2)} GiB` : ""],
      ["Copies", (t) => (t.locations || []).map((l) => html`<div>${l.type === "storagepool" ? link(`#/pools/${l.id}`, `pool ${l.name}`) : `store ${l.name}`} <span class="muted">${l.state}</span></div>`)],
    ]} />`;
}

export function Accounts() {
  return html`<h2>Accounts</h2><${PagedTable} command="listAccounts" item="account" params=${{ listall: true }} columns=${[
    ["Name", (a) => a.name], ["Domain", (a) => a.domain], ["Type", (a) => a.accounttype], ["State", (a) => a.state],
    ["VMs", (a) => a.vmtotal ?? ""],
  ]} />`;
}

// createConsoleEndpoint, then noVNC on the websocket it names, reached through this page's own host.
export function Console({ id }) {
  const screen = useRef(null);
  const [error, setError] = useState(null);
  const [status, setStatus] = useState("connecting");
  useEffect(() => {
    let rfb = null;
    call("createConsoleEndpoint", { virtualmachineid: id }).then((a) => {
      const ep = a.consoleendpoint || a;
      const ws = ep.websocket;
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      rfb = new RFB(screen.current, `${scheme}://${location.host}${ws.path}?token=${encodeURIComponent(ws.token)}`, { wsProtocols: ["binary"] });
      rfb.addEventListener("connect", () => setStatus("connected"));
      rfb.addEventListener("disconnect", (e) => setStatus(e.detail.clean ? "disconnected" : "connection lost"));
    }).catch(setError);
    return () => rfb && rfb.disconnect();
  }, [id]);
  return html`<h2>Console</h2><p>${link(`#/vms/${id}`, "Back to the VM")} · <span class="console-status">${status}</span></p>
    <${ErrorBox} error=${error} /><div id="console-screen" ref=${screen}></div>`;
}
