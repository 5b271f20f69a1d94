// Progressive enhancement of the sign-in form: JSON login, a second step for the one-time code.
(function () {
  "use strict";
  var form = document.getElementById("login");
  if (!form || !window.fetch) return;
  var errorBox = document.getElementById("error");
  var noticeBox = document.getElementById("notice");
  var totpField = document.getElementById("totp-field");
  var button = document.getElementById("submit");

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  function showNotice(text) {
    noticeBox.textContent = text;
    noticeBox.hidden = !text;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var data = {};
    new FormData(form).forEach(function (value, key) { if (value !== "") data[key] = value; });
    showError("");
    showNotice("");
    button.disabled = true;
    fetch(form.action, {
      method: "POST", credentials: "same-origin",
      // X-Authproxy-Portal: the one-time-code step comes back as 200 {"step": "totp"}, not as a 401.
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-Authproxy-Portal": "1" },
      body: JSON.stringify(data)
    }).then(function (response) {
      return response.json().then(function (body) { return { status: response.status, body: body }; },
        function () { return { status: response.status, body: {} }; });
    }).then(function (result) {
      button.disabled = false;
      if (result.status === 200 && result.body.authenticated) {
        window.location.assign(result.body.redirect || "/");
        return;
      }
      if (result.body.step === "totp") {
        totpField.hidden = false;
        showNotice(result.body.message || "Enter your one-time code.");
        document.getElementById("totp").focus();
        return;
      }
      showError(result.body.message || "Sign-in failed.");
      document.getElementById("password").value = "";
    }, function () {
      button.disabled = false;
      showError("authproxy is not answering. Check your connection and try again.");
    });
  });
})();
