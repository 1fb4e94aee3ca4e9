// Storage: the pools (capacity bars, maintenance), a pool's disks, a disk's page, and "move disk".
import { useEffect, useState } from "preact/hooks";
import { call, isAdmin } from "./api.js";
import { html, PagedTable, ErrorBox, JobView, Bar, useAction, gib, link } from "./widgets.js";

export function PoolList() {
  return html`<h2>Storage pools</h2>
    <${PagedTable} command="listStoragePools" item="storagepool" columns=${[
      ["Name", (p) => link(`#/pools/${p.id}`, p.name)],
      ["Scope", (p) => p.scope],
      ["Used / total", (p) => html`<${Bar} done=${p.disksizeused} total=${p.disksizetotal} /> ${gib(p.disksizeused)} / ${gib(p.disksizetotal)}`],
      ["State", (p) => p.state],
      ["Zone", (p) => p.zonename],
      ["Host / cluster", (p) => p.hostname || p.clustername || ""],
    ]} />`;
}

export function PoolPage({ id }) {
  const [pool, setPool] = useState(null);
  const [error, setError] = useState(null);
  const [n, setN] = useState(0);
  const load = () => call("listStoragePools", { id }).then((a) => setPool((a.storagepool || [])[0] || false)).catch(setError);
  useEffect(() => { load(); }, [id]);
  const action = useAction(() => { load(); setN(n + 1); });
  if (error) return html`<${ErrorBox} error=${error} />`;
  if (pool === null) return html`<p class="muted">Loading…</p>`;
  if (pool === false) return html`<div class="error">No storage pool with id ${id}</div>`;
  return html`<h2>Pool <span class="poolname">${pool.name}</span></h2>
    <table><tbody>
      <tr><th>State</th><td class="poolstate">${pool.state}</td></tr><tr><th>Scope</th><td>${pool.scope}</td></tr>
      <tr><th>Capacity</th><td><${Bar} done=${pool.disksizeused} total=${pool.disksizetotal} /> ${gib(pool.disksizeused)} / ${gib(pool.disksizetotal)}</td></tr>
      <tr><th>Path</th><td>${pool.path}</td></tr>
    </tbody></table>
    ${isAdmin() ? html`<div class="actions">
      <button disabled=${action.busy} onClick=${() => action.run("enableStorageMaintenance", { id })}>Maintenance on</button>
      <button disabled=${action.busy} onClick=${() => action.run("cancelStorageMaintenance", { id })}>Maintenance off</button></div>` : ""}
    <${JobView} job=${action.job} onCancel=${action.cancel} /><${ErrorBox} error=${action.error} />
    <h3>Disks on this pool</h3>
    <${PagedTable} key=${n} command="listVolumes" item="volume" params=${{ storageid: id, listall: true }} empty="No disk on this pool."
      columns=${[
        ["Disk", (v) => link(`#/volumes/${v.id}`, v.name)],
        ["VM", (v) => (v.virtualmachineid ? link(`#/vms/${v.virtualmachineid}`, v.vmname) : html`<span class="muted">detached</span>`)],
        ["Type", (v) => v.type], ["Size", (v) => gib(v.size)], ["State", (v) => v.state],
      ]} />`;
}

export function VolumePage({ id }) {
  const [vol, setVol] = useState(null);
  const [error, setError] = useState(null);
  const load = () => call("listVolumes", { id, listall: true }).then((a) => setVol((a.volume || [])[0] || false)).catch(setError);
  useEffect(() => { load(); }, [id]);
  if (error) return html`<${ErrorBox} error=${error} />`;
  if (vol === null) return html`<p class="muted">Loading…</p>`;
  if (vol === false) return html`<div class="error">No disk with id ${id}</div>`;
  return html`<h2>Disk <span class="volname">${vol.name}</span></h2>
    <table><tbody>
      <tr><th>VM</th><td>${vol.virtualmachineid ? link(`#/vms/${vol.virtualmachineid}`, vol.vmname) : "detached"}</td></tr>
      <tr><th>Pool</th><td class="pool">${vol.storageid ? link(`#/pools/${vol.storageid}`, vol.storage) : ""}</td></tr>
      <tr><th>Size</th><td>${gib(vol.size)} (allocated ${gib(vol.physicalsize)})</td></tr>
      <tr><th>Chain</th><td>${vol.chainsize} layer(s)${vol.templateid ? ", on a template base" : ""}</td></tr>
      <tr><th>State</th><td>${vol.state}</td></tr>
    </tbody></table>
    ${isAdmin() ? html`<${MoveDisk} volume=${vol} live=${vol.vmstate === "Running"} onDone=${load} />` : ""}`;
}

// Targets from findStoragePoolsForMigration: suitable ones first, the others with the API's reason.
export function MoveDisk({ volume, live, onDone }) {
  const [pools, setPools] = useState(null);
  const [target, setTarget] = useState("");
  const [error, setError] = useState(null);
  const action = useAction(onDone);
  useEffect(() => {
    call("findStoragePoolsForMigration", { id: volume.id })
      .then((a) => setPools((a.storagepool || []).sort((x, y) => y.suitableformigration - x.suitableformigration)))
      .catch(setError);
  }, [volume.id]);
  const submit = (e) => { e.preventDefault(); action.run("migrateVolume", { volumeid: volume.id, storageid: target, livemigrate: live ? "true" : undefined }); };
  return html`<form class="panel move" onSubmit=${submit}>
    <b>Move ${volume.name}</b> (now on ${volume.storage})<${ErrorBox} error=${error} />
    ${pools === null ? html`<p class="muted">Finding pools…</p>` : html`<table><tbody>${pools.map((p) => html`<tr class=${p.suitableformigration ? "suitable" : "unsuitable"}>
      <td><label><input type="radio" name="target" value=${p.id} disabled=${!p.suitableformigration} onChange=${() => setTarget(p.id)} /> ${p.name}</label></td>
      <td>${p.scope}</td><td class="muted">${p.suitableformigration ? "" : p.reasonunsuitable || "not suitable"}</td></tr>`)}</tbody></table>`}
    <button type="submit" disabled=${!target || action.busy}>Move</button>
    <${JobView} job=${action.job} onCancel=${action.cancel} />
    <${ErrorBox} error=${action.error} />
  </form>`;
}
