// The UI's shell: hash routes (links one can reload and share), the login form, the header, logout.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { login, logout, session, isAdmin, whenExpired } from "./api.js";
import { html, ErrorBox } from "./widgets.js";
import { VmList, VmPage, Deploy } from "./vms.js";
import { PoolList, PoolPage, VolumePage } from "./storage.js";
import { Jobs, Events, Hosts, Zones, Templates, Accounts, Console } from "./other.js";

const ROUTES = [
  [/^#\/vms\/([\w-]+)$/, (m) => html`<${VmPage} id=${m[1]} />`],
  [/^#\/vms$/, () => html`<${VmList} />`],
  [/^#\/deploy$/, () => html`<${Deploy} />`],
  [/^#\/pools\/([\w-]+)$/, (m) => html`<${PoolPage} id=${m[1]} />`],
  [/^#\/pools$/, () => html`<${PoolList} />`],
  [/^#\/volumes\/([\w-]+)$/, (m) => html`<${VolumePage} id=${m[1]} />`],
  [/^#\/console\/([\w-]+)/, (m) => html`<${Console} id=${m[1]} />`],
  [/^#\/jobs$/, () => html`<${Jobs} />`],
  [/^#\/events$/, () => html`<${Events} />`],
  [/^#\/hosts$/, () => html`<${Hosts} />`],
  [/^#\/zones$/, () => html`<${Zones} />`],
  [/^#\/templates$/, () => html`<${Templates} />`],
  [/^#\/accounts$/, () => html`<${Accounts} />`],
];

function useHash() {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return hash;
}

function Login({ onLogin, notice }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    setBusy(true); setError(null);
    try { onLogin(await login(f.get("username"), f.get("password"), f.get("domain"))); } catch (err) { setError(err); } finally { setBusy(false); }
  };
  return html`<form class="login" onSubmit=${submit}>
    <h2>Strato</h2>
    ${notice ? html`<div class="muted notice">${notice}</div>` : ""}
    <input name="username" placeholder="User name" autocomplete="username" required />
    <input name="password" type="password" placeholder="Password" autocomplete="current-password" />
    <input name="domain" placeholder="Domain (/ for ROOT)" value="/" />
    <button type="submit" disabled=${busy}>Log in</button>
    <${ErrorBox} error=${error} />
  </form>`;
}

function App() {
  const [who, setWho] = useState(session());
  const [notice, setNotice] = useState(null);
  const hash = useHash();
  useEffect(() => whenExpired((err) => { setNotice(`Logged out: ${err.message}`); setWho(null); }), []);
  if (!who) return html`<${Login} notice=${notice} onLogin=${(s) => { setNotice(null); setWho(s); }} />`;
  const route = hash && hash !== "#/" ? hash : "#/vms";
  const found = ROUTES.map(([re, view]) => [route.match(re), view]).find(([m]) => m);
  const nav = [["#/vms", "VMs"], ["#/pools", "Pools"], ["#/jobs", "Tasks"], ["#/events", "Events"], ["#/templates", "Templates"]];
  if (isAdmin()) nav.push(["#/hosts", "Hosts"], ["#/zones", "Zones"], ["#/accounts", "Accounts"]);
  const out = async () => { await logout().catch(() => {}); setWho(null); };
  return html`<header><b>Strato</b>
      ${nav.map(([href, text]) => html`<a href=${href} class=${route.startsWith(href) ? "on" : ""}>${text}</a>`)}
      <span class="who">${who.username} (${who.account})</span><button class="logout" onClick=${out}>Log out</button></header>
    <main>${found ? found[1](found[0]) : html`<div class="error">No page ${route}</div>`}</main>`;
}

render(html`<${App} />`, document.getElementById("app"));
