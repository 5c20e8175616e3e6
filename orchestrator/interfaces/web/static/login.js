// The link `orchestrator web --show-url` prints carries the token after '#': it never reaches a server log.
"use strict";
// A link to one agent's card (#agent=NAME, from Grafana) is kept across the login.
document.addEventListener("DOMContentLoaded", () => {
  if (window.location.hash.startsWith("#agent=")) document.getElementById("next").value = window.location.hash;
  const match = /^#token=(.+)$/.exec(window.location.hash);
  if (match) {
    history.replaceState(null, "", "/");
    document.getElementById("token").value = decodeURIComponent(match[1]);
    document.getElementById("login").submit();
  }
});
