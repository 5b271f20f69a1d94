// The admin page of local accounts: renders the JSON API's answers with textContent only (never HTML
// from data), sends JSON with the same-origin cookie. No inline script: the portal's CSP holds.
"use strict";
(function () {
  const api = document.body.dataset.api;
  const status = document.getElementById("status");
  const error = document.getElementById("error");
  const ROLES = ["viewer", "editor", "admin"];

  function say(text, isError) {
    const target = isError ? error : status;
    const other = isError ? status : error;
    other.hidden = true;
    target.textContent = text;
    target.hidden = false;
  }

  async function call(method, path, body) {
    const init = { method: method, credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(api + path, init);
    let data = {};
    try { data = await resp.json(); } catch (e) { data = {}; }
    if (!resp.ok) {
      throw new Error(data.message || ("Error " + resp.status));
    }
    return data;
  }

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    row.appendChild(td);
    return td;
  }

  function button(td, label, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", onClick);
    td.appendChild(b);
    return b;
  }

  function when(seconds) {
    return seconds ? new Date(seconds * 1000).toLocaleString() : "never";
  }

  async function act(work, done) {
    try {
      await work();
      say(done, false);
      await refresh();
    } catch (e) {
      say(e.message, true);
    }
  }

  function renderUsers(users) {
    const body = document.querySelector("#users tbody");
    body.replaceChildren();
    for (const u of users) {
      const row = document.createElement("tr");
      row.dataset.user = u.username;
      cell(row, u.username);
      const roleCell = cell(row, "");
      const select = document.createElement("select");
      select.setAttribute("aria-label", "Role of " + u.username);
      for (const r of ROLES) {
        const opt = document.createElement("option");
        opt.value = r;
        opt.textContent = r;
        opt.selected = r === u.role;
        select.appendChild(opt);
      }
      select.addEventListener("change", function () {
        act(() => call("PATCH", "/users/" + u.id, { role: select.value }), u.username + " is now " + select.value + ".");
      });
      roleCell.appendChild(select);
      cell(row, u.email);
      cell(row, u.allowedKeyIds.join(", "));
      cell(row, (u.disabled ? "disabled" : "enabled") + (u.totpEnabled ? ", TOTP" : ""));
      cell(row, when(u.lastLoginAt));
      const actions = cell(row, "");
      button(actions, u.disabled ? "Enable" : "Disable", function () {
        act(() => call("PATCH", "/users/" + u.id, { disabled: !u.disabled }), u.username + " updated.");
      }).setAttribute("aria-label", (u.disabled ? "Enable " : "Disable ") + u.username);
      if (u.totpEnabled) {
        button(actions, "Reset TOTP", function () {
          act(() => call("PATCH", "/users/" + u.id, { resetTotp: true }), "TOTP of " + u.username + " reset.");
        }).setAttribute("aria-label", "Reset TOTP of " + u.username);
      }
      button(actions, "Delete", function () {
        if (window.confirm("Delete " + u.username + "?")) {
          act(() => call("DELETE", "/users/" + u.id), u.username + " deleted.");
        }
      }).setAttribute("aria-label", "Delete " + u.username);
      body.appendChild(row);
    }
  }

  function renderKeys(keys) {
    const body = document.querySelector("#keys tbody");
    body.replaceChildren();
    for (const k of keys) {
      const row = document.createElement("tr");
      row.dataset.key = k.name;
      cell(row, k.name);
      cell(row, k.algorithm);
      cell(row, k.site || "any");
      cell(row, k.id);
      button(cell(row, ""), "Delete", function () {
        if (window.confirm("Delete the key " + k.name + "?")) {
          act(() => call("DELETE", "/keys/" + k.id), "Key " + k.name + " deleted.");
        }
      }).setAttribute("aria-label", "Delete key " + k.name);
      body.appendChild(row);
    }
  }

  function renderSessions(sessions) {
    const body = document.querySelector("#sessions tbody");
    body.replaceChildren();
    for (const s of sessions) {
      const row = document.createElement("tr");
      row.dataset.session = s.id;
      row.dataset.user = s.user;
      cell(row, s.user + (s.current ? " (this session)" : ""));
      cell(row, s.site);
      cell(row, s.clientIp);
      cell(row, when(s.createdAt));
      cell(row, when(s.lastSeenAt));
      const actions = cell(row, "");
      if (!s.current) {
        button(actions, "End", function () {
          act(() => call("DELETE", "/sessions/" + s.id), "Session of " + s.user + " ended.");
        }).setAttribute("aria-label", "End the session of " + s.user + " from " + s.clientIp);
      }
      body.appendChild(row);
    }
  }

  let known = { users: [], keys: [] };

  function renderGrant() {
    const userSelect = document.getElementById("grant-user");
    const choices = document.getElementById("grant-choices");
    if (!userSelect || !choices) {
      return;
    }
    const chosen = userSelect.value;
    userSelect.replaceChildren();
    for (const u of known.users) {
      const opt = document.createElement("option");
      opt.value = u.id;
      opt.textContent = u.username;
      opt.selected = u.id === chosen;
      userSelect.appendChild(opt);
    }
    const user = known.users.find((u) => u.id === userSelect.value);
    const legend = choices.querySelector("legend");
    choices.replaceChildren(legend);
    for (const k of known.keys) {
      const id = "grant-" + k.id;
      const box = document.createElement("input");
      box.type = "checkbox";
      box.id = id;
      box.value = k.id;
      box.checked = !!user && (user.allowedKeyIds.includes(k.id) || user.allowedKeyIds.includes(k.name));
      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = k.name + (k.site ? " (" + k.site + ")" : "");
      choices.append(box, label);
    }
  }

  async function refresh() {
    if (!document.getElementById("users")) {
      return;
    }
    const [users, keys, sessions] = await Promise.all([call("GET", "/users"), call("GET", "/keys"),
                                                       call("GET", "/sessions")]);
    renderUsers(users.users);
    renderKeys(keys.keys);
    renderSessions(sessions.sessions);
    known = { users: users.users, keys: keys.keys };
    renderGrant();
    document.body.dataset.ready = "1";
  }

  function formData(form) {
    const out = {};
    for (const el of form.elements) {
      if (el.name) {
        out[el.name] = el.value;
      }
    }
    return out;
  }

  function onSubmit(id, send, done) {
    const form = document.getElementById(id);
    if (!form) {
      return;
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const data = formData(form);
      act(async function () {
        await send(data);
        form.reset();
      }, done(data));
    });
  }

  onSubmit("add-user", (d) => call("POST", "/users", d), (d) => "User " + d.username + " added.");
  onSubmit("add-key", function (d) {
    if (!d.algorithm) { delete d.algorithm; }
    return call("POST", "/keys", d);
  }, (d) => "Key " + d.name + " added; its secret will not be shown again.");
  onSubmit("change-password", async function (d) {
    await call("POST", "/change-password", d);
    const section = document.getElementById("change-password").closest("section");
    section.hidden = true;
    if (!document.getElementById("users")) {   // the password page: back where the person was going
      window.location.assign(document.body.dataset.rd || "/");
    }
  }, () => "Password changed.");

  const grant = document.getElementById("grant-keys");
  if (grant) {
    document.getElementById("grant-user").addEventListener("change", renderGrant);
    grant.addEventListener("submit", function (event) {
      event.preventDefault();
      const userId = document.getElementById("grant-user").value;
      const user = known.users.find((u) => u.id === userId);
      const ids = [...document.querySelectorAll("#grant-choices input:checked")].map((b) => b.value);
      act(() => call("PATCH", "/users/" + userId, { allowedKeyIds: ids }),
          "Keys of " + (user ? user.username : "the user") + " saved.");
    });
  }

  if (document.getElementById("users")) {
    refresh().catch((e) => say(e.message, true));
  }
})();
