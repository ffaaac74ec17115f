// Dashboard behaviour that htmx attributes cannot express. No inline script anywhere (CSP).
(function () {
  "use strict";

  // Failed htmx requests are not swapped (see the htmx-config meta); say so instead of
  // leaving the agent looking at a page that silently did nothing.
  function showError(message) {
    var toast = document.getElementById("htmx-error");
    if (!toast) return;
    toast.textContent = message;
    toast.hidden = false;
    window.clearTimeout(showError.timer);
    showError.timer = window.setTimeout(function () { toast.hidden = true; }, 6000);
  }

  document.addEventListener("htmx:responseError", function (event) {
    var status = event.detail.xhr.status;
    var text = status === 400
      ? "The form expired. Reload the page and try again."
      : "Something went wrong (" + status + "). Try again.";
    showError(text);
  });

  document.addEventListener("htmx:sendError", function () {
    showError("The server cannot be reached. Check your connection.");
  });

  // Marks the page as scripted, so that buttons needed only without JavaScript hide.
  document.documentElement.classList.add("js");
})();
