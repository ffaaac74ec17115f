// Dashboard behaviour that htmx attributes cannot express. No inline script anywhere (CSP).
(function () {
  "use strict";

  // Events by which the agent, not a timer or a poll, causes an htmx request.
  var USER_EVENTS = ["click", "submit", "change", "input", "search", "keyup", "keydown"];

  // Failed htmx requests are not swapped (see the htmx-config meta); say so instead of
  // leaving the agent looking at a page that silently did nothing. The message stays until
  // the agent dismisses it or starts another action: nobody has to read it against a clock.
  function showError(message) {
    var toast = document.getElementById("htmx-error");
    if (!toast) return;
    document.getElementById("htmx-error-text").textContent = message;
    toast.hidden = false;
  }

  function hideError() {
    var toast = document.getElementById("htmx-error");
    if (toast) toast.hidden = true;
  }

  document.addEventListener("click", function (event) {
    if (event.target.closest && event.target.closest(".toast-close")) hideError();
  });

  function textOf(root, selector) {
    var found = root.querySelector(selector);
    return found ? found.textContent.trim() : "";
  }

  // What the dashboard's answer itself says: its not-found answer names what is missing
  // ("Customer 7 not found"), its 409 for a customer whose primary was deleted outside it
  // says that it needs regrouping, and its error pages carry a title and a message
  // ("Busy. Too many changes to this customer at once. ...", "Form expired. Reload ...").
  function answerText(xhr) {
    if (!xhr.responseText) return null;
    var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
    var title = textOf(doc, "#not-found-title");
    if (title) return title + ".";
    title = textOf(doc, "#orphaned-title");
    if (title) return title + ": reload the page to regroup it.";
    var card = doc.querySelector(".error-card");
    if (!card) return null;
    title = textOf(card, "h1");
    var message = textOf(card, "p");
    if (!title) return message || null;
    return message ? title + ". " + message : title + ".";
  }

  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    showError(answerText(xhr) || "Something went wrong (" + xhr.status + "). Try again.");
  });

  // Another action the agent starts (not a poll) makes the last failure's message moot.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var config = event.detail.requestConfig || {};
    if (config.triggeringEvent && USER_EVENTS.indexOf(config.triggeringEvent.type) !== -1) hideError();
  });

  document.addEventListener("htmx:sendError", function () {
    showError("The server cannot be reached. Check your connection.");
  });

  // The action forms that open in place (link, block, delete, issue or void a voucher) are
  // <details>: Escape closes the one the keyboard is in and puts focus back on its button.
  var DISCLOSURES = "details.action-disclosure[open], details.voucher-issue[open], details.voucher-void[open]";

  // A link that fetches a confirmation into the page names it with aria-controls (the delete
  // link of a contact row; without JavaScript it opens the form's own page). That form's Cancel
  // and Escape close it again, leaving its empty slot, and focus goes back to the link.
  function openerOf(element) {
    return element && element.id ? document.querySelector("[aria-controls='" + element.id + "']") : null;
  }

  function closeInPlace(form, opener) {
    var slot = document.createElement("div");
    slot.id = form.id;
    slot.className = "confirm-slot";
    form.replaceWith(slot);
    opener.focus();
  }

  document.addEventListener("click", function (event) {
    var cancel = event.target.closest && event.target.closest(".confirm-cancel");
    var form = cancel && cancel.closest("form");
    var opener = openerOf(form);
    if (!opener) return;
    event.preventDefault();
    closeInPlace(form, opener);
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape" || event.defaultPrevented) return;
    var active = document.activeElement;
    var form = active && active.closest ? active.closest("form") : null;
    var opener = openerOf(form);
    if (opener) {
      event.preventDefault();
      closeInPlace(form, opener);
      return;
    }
    var open = active && active.closest ? active.closest(DISCLOSURES) : null;
    if (!open) {
      // Focus left on the page itself (after a click on blank space: <body>, or main, which
      // takes focus there): close the last one opened.
      var all = document.querySelectorAll(DISCLOSURES);
      var onPage = !active || active === document.body || active.id === "main";
      if (!all.length || !onPage) return;
      open = all[all.length - 1];
    }
    event.preventDefault();
    open.open = false;
    var summary = open.querySelector("summary");
    if (summary) summary.focus();
  });

  // A second click on a submit button while the first request runs would send the form twice
  // (a plain form before the next page arrives, an htmx form whose request is still out).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset.submitting) {
      event.preventDefault();
      return;
    }
    // Only plain POST forms: htmx forms are guarded below, a GET (a search) may be sent again.
    if ((form.method || "").toLowerCase() !== "post" || form.hasAttribute("hx-post")) return;
    form.dataset.submitting = "1";
    // Back/forward cache or a download may bring the same page back: allow a new submit then.
    window.setTimeout(function () { delete form.dataset.submitting; }, 5000);
  });

  document.addEventListener("htmx:beforeRequest", function (event) {
    var form = event.detail.elt;
    if (form.tagName !== "FORM" || event.detail.requestConfig.verb === "get") return;
    form.setAttribute("aria-busy", "true");
    form.querySelectorAll("button[type=submit]").forEach(function (button) { button.disabled = true; });
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.detail.elt;
    if (form.tagName !== "FORM") return;
    form.removeAttribute("aria-busy");
    form.querySelectorAll("button[type=submit]").forEach(function (button) { button.disabled = false; });
  });

  // Focus after a swap. htmx keeps focus only on an element whose id comes back; a swap that
  // replaces the focused button or link (a form answered with its errors, "Load more", a
  // section re-rendered) leaves it on <body>, and the next Tab starts over at the top of the
  // page. When that happened on a request the agent caused, focus goes to, in this order: the
  // first invalid field of the new content, else its error summary; for "load more", the first
  // new row's link (or the row itself); else the heading of the swapped region. Focus still
  // somewhere on the page is left alone, and so are swaps nobody asked for (polling).
  var LOAD_MORE = ".load-more, .load-more-item";
  var FOCUSABLE = "a[href], button:not([disabled]), input:not([disabled]):not([type=hidden]), select:not([disabled]), textarea:not([disabled]), summary, [tabindex]:not([tabindex='-1'])";
  var HEADINGS = "h1, h2, h3, h4, h5, h6";
  var swaps = new WeakMap(); // xhr -> {target, oob: [out-of-band elements], elts: [swapped in]}
  var swapping = null; // the swap under way, between htmx:beforeSwap and its out-of-band parts

  function focusLost() {
    var active = document.activeElement;
    return !active || active === document.body || !active.isConnected;
  }

  function firstIn(elements, selector) {
    for (var i = 0; i < elements.length; i++) {
      var found = elements[i].matches(selector) ? elements[i] : elements[i].querySelector(selector);
      if (found) return found;
    }
    return null;
  }

  function moveFocus(element) {
    if (!element) return false;
    if (!element.matches(FOCUSABLE) && !element.hasAttribute("tabindex")) element.setAttribute("tabindex", "-1");
    element.focus();
    return document.activeElement === element;
  }

  function firstNewRow(elements) {
    for (var i = 0; i < elements.length; i++) {
      if (!elements[i].matches(LOAD_MORE)) return elements[i].querySelector(FOCUSABLE) || elements[i];
    }
    return null;
  }

  function regionHeading(region) {
    if (!region) return null;
    var heading = region.matches(HEADINGS) ? region : region.querySelector(HEADINGS);
    if (heading) return heading;
    var labelled = region.closest("[aria-labelledby]");
    heading = labelled && document.getElementById(labelled.getAttribute("aria-labelledby").split(" ")[0]);
    return heading || document.querySelector("#main h1");
  }

  // What a link with aria-controls opened in place gets focus, and is scrolled into view whole
  // (the agent clicked next to it, so it is at most a little below the fold).
  function focusOpened(requester) {
    var id = requester && requester.getAttribute && requester.getAttribute("aria-controls");
    var opened = id && document.getElementById(id);
    if (!opened || !opened.firstElementChild) return false;
    if (!moveFocus(opened)) return false;
    opened.scrollIntoView({ block: "nearest" });
    return true;
  }

  function settleFocus(swap, detail) {
    var config = detail.requestConfig || {};
    var trigger = config.triggeringEvent;
    if (!trigger || USER_EVENTS.indexOf(trigger.type) === -1) return;
    if (focusOpened(config.elt)) return;
    if (!focusLost()) return;
    var elements = swap.elts.filter(function (element) { return element.isConnected; });
    var region = elements.filter(function (element) { return swap.oob.indexOf(element) === -1; });
    var all = region.concat(elements.filter(function (element) { return region.indexOf(element) === -1; }));
    var requester = config.elt;
    var candidates = [
      firstIn(all, "[aria-invalid='true']"),
      firstIn(all, ".form-errors, [role='alert']"),
      requester && requester.closest && requester.closest(LOAD_MORE) ? firstNewRow(region) : null,
      regionHeading(region[0]),
    ];
    for (var i = 0; i < candidates.length; i++) {
      if (moveFocus(candidates[i])) return;
    }
  }

  document.addEventListener("htmx:beforeSwap", function (event) {
    swapping = { target: event.detail.target, oob: [], elts: [] };
    swaps.set(event.detail.xhr, swapping);
  });

  document.addEventListener("htmx:oobAfterSwap", function (event) {
    if (swapping && event.target !== swapping.target) swapping.oob.push(event.target);
  });

  document.addEventListener("htmx:afterSettle", function (event) {
    var swap = event.detail.xhr && swaps.get(event.detail.xhr);
    if (!swap) return;
    swap.elts.push(event.target);
    if (swap.scheduled) return;
    swap.scheduled = true;
    // htmx:afterSettle comes once per swapped element: decide once they have all come.
    window.setTimeout(function () { settleFocus(swap, event.detail); }, 0);
  });

  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    document.querySelectorAll("form[data-submitting]").forEach(function (form) { delete form.dataset.submitting; });
  });

  // Marks the page as scripted, so that buttons needed only without JavaScript hide.
  document.documentElement.classList.add("js");
})();
