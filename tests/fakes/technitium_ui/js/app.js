/*
 * A small stand-in for Technitium DNS Server's web UI (www/js/common.js, auth.js, main.js), written for
 * authproxy's browser tests. It handles the token the way the real UI does:
 *  - on load: a `token` cookie (the SSO handoff) wins, is deleted and copied to localStorage; otherwise
 *    localStorage.token. With a token it calls api/user/session/get and stores sessionData.token; with
 *    none it shows the login page and silently tries login("admin", "admin");
 *  - a login POSTs user/pass/totp/includeInfo as a form to api/user/login and stores responseJSON.token;
 *    "2fa-required" shows the OTP field;
 *  - every API call is a POST that carries the token: `Authorization: Bearer` (v15+) or `?token=` (v14);
 *  - downloads ask api/user/createSingleUseToken, then window.open("api/...?token=<single-use>").
 * The envelope is HTTP 200 JSON with status ok / error / invalid-token / 2fa-required.
 */
(function () {
  "use strict";

  var apiVersion = parseInt(document.documentElement.getAttribute("data-api-version"), 10) || 15;
  var sessionData = null;

  function $(id) { return document.getElementById(id); }
  function show(id) { $(id).classList.remove("hidden"); }
  function hide(id) { $(id).classList.add("hidden"); }

  function showAlert(title, message) { $("alert").textContent = title + " " + (message || ""); }
  function hideAlert() { $("alert").textContent = ""; }

  function getCookie(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].substring(0, eq) === name) return decodeURIComponent(parts[i].substring(eq + 1));
    }
    return null;
  }

  function deleteCookie(name) {
    document.cookie = name + "=; Max-Age=0; Path=/; Secure; SameSite=Lax";
    document.cookie = name + "=; Max-Age=0; Path=/";
  }

  function currentToken() {
    return sessionData != null ? sessionData.token : localStorage.getItem("token");
  }

  // common.js HTTPRequest: always a POST with a form body; the envelope decides which callback runs.
  function HTTPRequest(o) {
    var url = o.url;
    var headers = { "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
                    "X-Requested-With": "XMLHttpRequest" };
    var token = o.noToken ? null : currentToken();
    if (token != null) {
      if (apiVersion >= 15) headers["Authorization"] = "Bearer " + token;
      else url += (url.indexOf("?") < 0 ? "?" : "&") + "token=" + encodeURIComponent(token);
    }
    fetch(url, { method: "POST", headers: headers, body: o.data || "", credentials: "same-origin",
                 cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (json) {
        switch (json.status) {
          case "ok": if (o.success) o.success(json); break;
          case "invalid-token":
            if (o.invalidToken) o.invalidToken();
            else if (o.error) o.error();
            else showPageLogin();
            break;
          case "2fa-required":
            if (o.twoFactorAuthRequired) o.twoFactorAuthRequired(json);
            else { showAlert("Error!", json.errorMessage); if (o.error) o.error(); }
            break;
          case "error":
            showAlert("Error!", json.errorMessage);
            if (o.error) o.error();
            break;
          default:
            showAlert("Invalid Response!", "Server returned invalid response status: " + json.status);
            if (o.error) o.error();
        }
      }, function () {
        showAlert("Error!", "Unable to connect to the server. Please try again.");
        if (o.error) o.error();
      });
  }

  function showPageLogin() {
    sessionData = null;
    hide("pageMain");
    show("pageLogin");
    document.body.removeAttribute("data-zones"); // the zones shown belonged to the signed-out user
    document.body.setAttribute("data-state", "login");
  }

  function showPageMain() {
    hide("pageLogin");
    hide("div2FAOTP");
    $("txtPass").disabled = false;
    $("txtPass").value = "";
    $("txt2FATOTP").value = "";
    $("mnuUserDisplayName").textContent = sessionData.displayName || sessionData.username;
    var info = sessionData.info || {};
    $("lblAboutVersion").textContent = info.version || "";
    $("lblDnsServerDomain").textContent = info.dnsServerDomain ? " - " + info.dnsServerDomain : "";
    document.title = (info.dnsServerDomain || "") + " - Technitium DNS Server v" + (info.version || "");
    show("pageMain");
    document.body.setAttribute("data-state", "main");
    refreshZones();
  }

  function refreshZones() {
    document.body.removeAttribute("data-zones");
    HTTPRequest({
      url: "api/zones/list",
      success: function (json) {
        var body = $("tableZonesBody");
        body.textContent = "";
        json.response.zones.forEach(function (zone) {
          var tr = document.createElement("tr");
          var name = document.createElement("td");
          name.textContent = zone.name;
          var type = document.createElement("td");
          type.textContent = zone.type;
          tr.appendChild(name);
          tr.appendChild(type);
          body.appendChild(tr);
        });
        document.body.setAttribute("data-zones", "loaded");
      }
    });
  }

  function gotSession(json) {
    sessionData = json;
    localStorage.setItem("token", sessionData.token);
    showPageMain();
  }

  // auth.js login(): username == null means "from the form"; otherwise the silent admin/admin try.
  function login(username, password) {
    var autoLogin = username != null;
    if (!autoLogin) {
      username = $("txtUser").value.toLowerCase();
      password = $("txtPass").value;
    }
    if (!username) { showAlert("Missing!", "Please enter an username."); return; }
    if (!password) { showAlert("Missing!", "Please enter a password."); return; }
    var totp = $("txt2FATOTP").value;
    var otpVisible = !$("div2FAOTP").classList.contains("hidden");
    if (otpVisible && totp.length !== 6) {
      showAlert("Missing!", "Please enter the 6-digit OTP that you see in your authenticator app.");
      return;
    }
    $("btnLogin").disabled = true;
    HTTPRequest({
      url: "api/user/login",
      noToken: true,
      data: "user=" + encodeURIComponent(username) + "&pass=" + encodeURIComponent(password) +
            "&totp=" + encodeURIComponent(totp) + "&includeInfo=true",
      success: function (json) {
        $("btnLogin").disabled = false;
        hideAlert();
        gotSession(json);
      },
      error: function () {
        $("btnLogin").disabled = false;
        if (otpVisible) $("txt2FATOTP").value = "";
        if (autoLogin) hideAlert();
      },
      twoFactorAuthRequired: function () {
        $("btnLogin").disabled = false;
        if (!autoLogin) {
          $("txtPass").disabled = true;
          show("div2FAOTP");
          $("txt2FATOTP").focus();
        }
      }
    });
  }

  function logout() {
    HTTPRequest({
      url: "api/user/logout",
      success: function () { localStorage.removeItem("token"); showPageLogin(); },
      error: function () { localStorage.removeItem("token"); showPageLogin(); }
    });
  }

  // main.js backupSettings(): a single-use token, then a new window on the download URL.
  function backupSettings() {
    HTTPRequest({
      url: "api/user/createSingleUseToken",
      success: function (json) {
        window.open("api/settings/backup?blockLists=true&logs=true&scopes=true&stats=true&zones=true" +
                    "&allowedZones=true&blockedZones=true&dnsSettings=true&authConfig=true" +
                    "&token=" + encodeURIComponent(json.response.token), "_blank");
      }
    });
  }

  function init() {
    $("frmLogin").addEventListener("submit", function (e) { e.preventDefault(); login(); });
    $("btnLogout").addEventListener("click", logout);
    $("btnBackupSettings").addEventListener("click", backupSettings);

    var handoff = getCookie("token");
    if (handoff != null) {
      deleteCookie("token");
      localStorage.setItem("token", handoff);
    }
    var token = localStorage.getItem("token");
    if (token == null) {
      showPageLogin();
      login("admin", "admin");
      return;
    }
    HTTPRequest({
      url: "api/user/session/get",
      success: gotSession,
      error: function () { localStorage.removeItem("token"); showPageLogin(); },
      invalidToken: function () { localStorage.removeItem("token"); showPageLogin(); }
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
