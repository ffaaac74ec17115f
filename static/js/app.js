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

  // The dashboard's not-found answer names what is missing ("Customer 7 not found").
  function notFoundTitle(xhr) {
    if (xhr.status !== 404 || !xhr.responseText) return null;
    var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
    var title = doc.getElementById("not-found-title");
    return title ? title.textContent.trim() + "." : null;
  }

  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var status = xhr.status;
    var text = status === 400
      ? "The form expired. Reload the page and try again."
      : notFoundTitle(xhr) || "Something went wrong (" + status + "). Try again.";
    showError(text);
  });

  document.addEventListener("htmx:sendError", function () {
    showError("The server cannot be reached. Check your connection.");
  });

  // Marks the page as scripted, so that buttons needed only without JavaScript hide.
  document.documentElement.classList.add("js");
})();
