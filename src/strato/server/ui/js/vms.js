// VMs: the list, a VM's page (disks with their pools and chains, NICs, power actions, moves), deploy.
import { useEffect, useState } from "preact/hooks";
import { call, isAdmin } from "./api.js";
import { html, PagedTable, ErrorBox, JobView, useAction, gib, link } from "./widgets.js";
import { MoveDisk } from "./storage.js";

export function VmList() {
  return html`<h2>Virtual machines</h2>
    <p><a href="#/deploy">Deploy a VM…</a></p>
    <${PagedTable} command="listVirtualMachines" item="virtualmachine" params=${{ listall: isAdmin() || undefined }}
      empty="No VM yet." columns=${[
        ["Name", (v) => link(`#/vms/${v.id}`, v.name)],
        ["State", (v) => v.state],
        ["Host", (v) => v.hostname || ""],
        ["Offering", (v) => v.serviceofferingname],
        ["Zone", (v) => v.zonename],
      ]} />`;
}

export function chain(vol, templates) {
  const layers = vol.chainsize || 0;
  if (!vol.templateid) return `${layers} layer${layers === 1 ? "" : "s"}`;
  const name = templates[vol.templateid] || "template";
  return `${name} (base) + ${Math.max(layers - 1, 0)} layer${layers - 1 === 1 ? "" : "s"}`;
}

export function VmPage({ id }) {
  const [vm, setVm] = useState(null);
  const [vols, setVols] = useState([]);
  const [error, setError] = useState(null);
  const [moving, setMoving] = useState(null);
  const [migrating, setMigrating] = useState(false);
  const load = () => Promise.all([
    call("listVirtualMachines", { id, listall: true }),
    call("listVolumes", { virtualmachineid: id, listall: true }),
  ]).then(([a, b]) => { setVm((a.virtualmachine || [])[0] || false); setVols((b.volume || []).sort((x, y) => x.deviceid - y.deviceid)); })
    .catch(setError);
  useEffect(() => { load(); }, [id]);
  const action = useAction(load);
  if (error) return html`<${ErrorBox} error=${error} />`;
  if (vm === null) return html`<p class="muted">Loading…</p>`;
  if (vm === false) return html`<div class="error">No VM with id ${id}</div>`;
  const templates = { [vm.templateid]: vm.templatename };
  return html`<h2>VM <span class="vmname">${vm.name}</span></h2>
    <table><tbody>
      <tr><th>State</th><td class="vmstate">${vm.state}</td></tr>
      <tr><th>Host</th><td>${vm.hostname || ""}</td></tr>
      <tr><th>Offering</th><td>${vm.serviceofferingname}</td></tr>
      <tr><th>Template</th><td>${vm.templatename}</td></tr>
      <tr><th>Zone</th><td>${vm.zonename}</td></tr>
    </tbody></table>
    <div class="actions">
      <button disabled=${action.busy} onClick=${() => action.run("startVirtualMachine", { id })}>Start</button>
      <button disabled=${action.busy} onClick=${() => action.run("stopVirtualMachine", { id })}>Stop</button>
      <button disabled=${action.busy} onClick=${() => action.run("rebootVirtualMachine", { id })}>Reboot</button>
      <button disabled=${action.busy} onClick=${() => confirm(`Destroy ${vm.name}?`) && action.run("destroyVirtualMachine", { id })}>Destroy</button>
      ${isAdmin() ? html`<button onClick=${() => setMigrating(!migrating)}>Migrate VM…</button>` : ""}
      <a href=${`#/console/${id}`}>Console</a>
    </div>
    <${JobView} job=${action.job} onCancel=${action.cancel} />
    <${ErrorBox} error=${action.error} />
    ${migrating ? html`<${MigrateVm} vm=${vm} vols=${vols} onDone=${load} />` : ""}
    <h3>Disks</h3>
    <table class="disks"><thead><tr><th>Disk</th><th>Type</th><th>Pool</th><th>Size</th><th>Chain</th><th></th></tr></thead>
    <tbody>${vols.map((v) => html`<tr data-id=${v.id}>
      <td>${link(`#/volumes/${v.id}`, v.name)}</td><td>${v.type}</td>
      <td class="pool">${v.storageid ? link(`#/pools/${v.storageid}`, v.storage) : ""}</td>
      <td>${gib(v.size)}</td><td>${chain(v, templates)}</td>
      <td>${isAdmin() ? html`<button onClick=${() => setMoving(moving === v.id ? null : v.id)}>Move disk…</button>` : ""}</td>
    </tr>`)}</tbody></table>
    ${moving ? html`<${MoveDisk} volume=${vols.find((v) => v.id === moving)} live=${vm.state === "Running"} onDone=${load} />` : ""}
    <h3>NICs</h3>
    ${(vm.nic || []).length ? html`<table><tbody>${vm.nic.map((n) => html`<tr><td>${n.networkname || n.networkid}</td><td>${n.ipaddress || ""}</td><td>${n.macaddress || ""}</td></tr>`)}</tbody></table>`
      : html`<p class="muted">No NIC reported by the API.</p>`}
    <h3>Snapshots</h3>
    <${SnapshotTree} vm=${vm} onChange=${load} />`;
}

// The VM's snapshots drawn as the tree they form (listVMSnapshot's parent), the one the VM's present state
// descends from marked current; take one (with memory while running), revert to one, delete one.
function SnapshotTree({ vm, onChange }) {
  const [snaps, setSnaps] = useState(null);
  const [error, setError] = useState(null);
  const [name, setName] = useState("");
  const [memory, setMemory] = useState(false);
  const reload = () => call("listVMSnapshot", { virtualmachineid: vm.id, listall: true })
    .then((a) => setSnaps(a.vmSnapshot || [])).catch(setError);
  useEffect(() => { reload(); }, [vm.id]);
  const action = useAction(() => { reload(); onChange(); });
  if (error) return html`<${ErrorBox} error=${error} />`;
  if (snaps === null) return html`<p class="muted">Loading…</p>`;
  const children = {};
  for (const s of snaps) (children[s.parent || ""] = children[s.parent || ""] || []).push(s);
  const node = (s) => html`<li data-id=${s.id} class=${s.current ? "snapshot current" : "snapshot"}>
    <span class="snapname">${s.displayname || s.name}</span> <span class="muted">${s.type} · ${s.state} · ${s.created || ""}</span>
    ${s.current ? html` <b class="current-mark">(current)</b>` : ""}
    <button class="revert" disabled=${action.busy} onClick=${() => action.run("revertToVMSnapshot", { vmsnapshotid: s.id })}>Revert</button>
    <button class="delete" disabled=${action.busy} onClick=${() => confirm(`Delete snapshot ${s.name}?`) && action.run("deleteVMSnapshot", { vmsnapshotid: s.id })}>Delete</button>
    ${(children[s.id] || []).length ? html`<ul>${children[s.id].map(node)}</ul>` : ""}
  </li>`;
  const take = (e) => {
    e.preventDefault();
    action.run("createVMSnapshot", { virtualmachineid: vm.id, name: name || undefined, snapshotmemory: memory || undefined });
  };
  return html`<div class="snapshots">
    ${snaps.length ? html`<ul class="snapshot-tree">${(children[""] || []).map(node)}</ul>` : html`<p class="muted">No snapshot.</p>`}
    <form class="take-snapshot" onSubmit=${take}>
      <input name="snapshotname" placeholder="name" value=${name} onInput=${(e) => setName(e.target.value)} />
      <label><input type="checkbox" name="snapshotmemory" checked=${memory} disabled=${vm.state !== "Running"}
        onChange=${(e) => setMemory(e.target.checked)} /> with memory</label>
      <button type="submit" disabled=${action.busy}>Take snapshot</button>
    </form>
    <${JobView} job=${action.job} />
    <${ErrorBox} error=${action.error} />
  </div>`;
}

function MigrateVm({ vm, vols, onDone }) {
  const [hosts, setHosts] = useState(null);
  const [pools, setPools] = useState({});
  const [host, setHost] = useState("");
  const [choice, setChoice] = useState({});
  const [error, setError] = useState(null);
  const action = useAction(onDone);
  useEffect(() => {
    call("findHostsForMigration", { virtualmachineid: vm.id }).then((a) => setHosts(a.host || [])).catch(setError);
    Promise.all(vols.map((v) => call("findStoragePoolsForMigration", { id: v.id }).then((a) => [v.id, a.storagepool || []])))
      .then((rows) => setPools(Object.fromEntries(rows))).catch(setError);
  }, [vm.id]);
  const submit = (e) => {
    e.preventDefault();
    const params = { virtualmachineid: vm.id, hostid: host };
    let i = 0;
    for (const v of vols) if (choice[v.id]) { params[`migrateto[${i}].volume`] = v.id; params[`migrateto[${i}].pool`] = choice[v.id]; i++; }
    action.run("migrateVirtualMachineWithVolume", params);
  };
  return html`<form class="panel migrate" onSubmit=${submit}>
    <${ErrorBox} error=${error} />
    <label>Target host <select name="hostid" value=${host} onChange=${(e) => setHost(e.target.value)}>
      <option value="">(choose)</option>
      ${(hosts || []).sort((a, b) => b.suitableformigration - a.suitableformigration).map((h) => html`<option value=${h.id} disabled=${!h.suitableformigration}>
        ${h.name}${h.requiresStorageMotion ? " (disks must move)" : ""}${h.suitableformigration ? "" : ` — ${h.reasonunsuitable || "unsuitable"}`}</option>`)}
    </select></label>
    ${vols.map((v) => html`<label>Pool for ${v.name} <select name=${`pool-${v.id}`} onChange=${(e) => setChoice({ ...choice, [v.id]: e.target.value })}>
      <option value="">(keep on ${v.storage})</option>
      ${(pools[v.id] || []).filter((p) => p.suitableformigration).map((p) => html`<option value=${p.id}>${p.name}</option>`)}
    </select></label>`)}
    <button type="submit" disabled=${!host || action.busy}>Migrate</button>
    <${JobView} job=${action.job} onCancel=${action.cancel} />
    <${ErrorBox} error=${action.error} />
  </form>`;
}

export function Deploy() {
  const [opts, setOpts] = useState({ zones: [], offerings: [], templates: [], disks: [], pools: [] });
  const [form, setForm] = useState({ name: "", zoneid: "", serviceofferingid: "", templateid: "", rootpool: "" });
  const [data, setData] = useState([]);
  const [error, setError] = useState(null);
  const action = useAction((a) => { if (a.id) location.hash = `#/vms/${a.id}`; });
  useEffect(() => {
    Promise.all([
      call("listZones", {}), call("listServiceOfferings", {}), call("listTemplates", { templatefilter: "executable" }),
      call("listDiskOfferings", {}), isAdmin() ? call("listStoragePools", {}) : Promise.resolve({}),
    ]).then(([z, o, t, d, p]) => {
      const next = { zones: z.zone || [], offerings: o.serviceoffering || [], templates: t.template || [], disks: d.diskoffering || [], pools: p.storagepool || [] };
      setOpts(next);
      setForm((f) => ({ ...f, zoneid: f.zoneid || (next.zones[0] || {}).id || "", serviceofferingid: f.serviceofferingid || (next.offerings[0] || {}).id || "", templateid: f.templateid || (next.templates[0] || {}).id || "" }));
    }).catch(setError);
  }, []);
  const set = (k) => (e) => setForm({ ...form, [k]: e.target.value });
  const pools = opts.pools.filter((p) => !form.zoneid || p.zoneid === form.zoneid);
  const poolSelect = (name, value, onChange) => html`<select name=${name} value=${value} onChange=${onChange}>
    <option value="">(the allocator chooses)</option>${pools.map((p) => html`<option value=${p.id}>${p.name} (${p.scope})</option>`)}</select>`;
  const submit = (e) => {
    e.preventDefault();
    const params = { name: form.name, zoneid: form.zoneid, serviceofferingid: form.serviceofferingid, templateid: form.templateid, rootdiskstorageid: form.rootpool };
    data.forEach((d, i) => { params[`datadisksdetails[${i}].diskofferingid`] = d.offering; if (d.pool) params[`datadisksdetails[${i}].storageid`] = d.pool; });
    action.run("deployVirtualMachine", params);
  };
  const sel = (name, value, onChange, items, label) => html`<select name=${name} value=${value} onChange=${onChange}>${items.map((i) => html`<option value=${i.id}>${label(i)}</option>`)}</select>`;
  return html`<h2>Deploy a VM</h2><${ErrorBox} error=${error} />
    <form class="panel deploy" onSubmit=${submit}>
      <label>Name <input name="name" value=${form.name} onInput=${set("name")} /></label>
      <label>Zone ${sel("zoneid", form.zoneid, set("zoneid"), opts.zones, (z) => z.name)}</label>
      <label>Offering ${sel("serviceofferingid", form.serviceofferingid, set("serviceofferingid"), opts.offerings, (o) => o.name)}</label>
      <label>Template ${sel("templateid", form.templateid, set("templateid"), opts.templates, (t) => t.name)}</label>
      ${isAdmin() ? html`<label>Root disk pool ${poolSelect("rootpool", form.rootpool, set("rootpool"))}</label>` : ""}
      ${data.map((d, i) => html`<div class="datadisk">Data disk ${i + 1}:
        ${sel(`dataoffering-${i}`, d.offering, (e) => setData(data.map((x, j) => (j === i ? { ...x, offering: e.target.value } : x))), opts.disks, (o) => o.name)}
        ${isAdmin() ? poolSelect(`datapool-${i}`, d.pool, (e) => setData(data.map((x, j) => (j === i ? { ...x, pool: e.target.value } : x)))) : ""}
        <button type="button" onClick=${() => setData(data.filter((_, j) => j !== i))}>Remove</button></div>`)}
      <p><button type="button" class="add-disk" onClick=${() => setData([...data, { offering: (opts.disks[0] || {}).id, pool: "" }])}>Add a data disk</button></p>
      <button type="submit" disabled=${action.busy}>Deploy</button>
      <${JobView} job=${action.job} />
      <${ErrorBox} error=${action.error} />
    </form>`;
}
