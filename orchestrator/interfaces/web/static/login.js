// The link `orchestrator web --show-url` prints carries the token after '#': it never reaches a server log.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const match = /^#token=(.+)$/.exec(window.location.hash);
  if (match) {
    history.replaceState(null, "", "/");
    document.getElementById("token").value = decodeURIComponent(match[1]);
    document.getElementById("login").submit();
  }
});
