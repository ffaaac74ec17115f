// Screen-pop: polls the server for incoming calls and shows each one in a pop-up.
// Short polls, not a held-open connection, so no gunicorn worker is tied up per agent;
// the cursor (the last call id seen) makes every poll a tiny indexed read.
(function () {
  "use strict";

  var script = document.currentScript;
  var pollUrl = script && script.dataset.pollUrl;
  var signInUrl = script && script.dataset.signInUrl;
  var requestLineLimit = Number(script && script.dataset.requestLineLimit) || 4094;
  if (!pollUrl) return;

  var INTERVAL_MS = 1000;
  // A failing server is asked less often, up to this.
  var MAX_BACKOFF_MS = 15000;
  // Signed out, the sign-in page answers; asked this often to notice a new sign-in.
  var SIGNED_OUT_MS = 5000;
  var STORAGE_KEY = "screen-pop-dismissed";
  var cursor = null;
  var delay = INTERVAL_MS;
  // A pop on its way out (fading) no longer counts: not in the count, not for focus or Escape.
  var LIVE = ".screen-pop[data-pop-id]:not(.screen-pop-leaving)";
  // The states (set by the server) in which a pop goes from the page: the call ended, another
  // agent answered it, or it timed out. A pop the agent is in (keyboard focus, pointer) stays
  // until they leave it; one they kept (clicked in it, or answered the call) stays, marked,
  // until they dismiss it. See docs/engagements.md, "When a pop goes".
  var LEAVING = ["ended", "taken", "stale"];
  // How long a pop takes to fade out (the stylesheet's transition).
  var FADE_MS = 600;
  // Read at each pop's going: the agent may change the setting with the page open.
  var reducedMotion = window.matchMedia ? window.matchMedia("(prefers-reduced-motion: reduce)") : null;
  // The page tells the server at most this many pops' states per poll.
  var MAX_SHOWN = 100;

  function container() {
    var box = document.getElementById("screen-pops");
    if (!box) {
      box = document.createElement("div");
      box.id = "screen-pops";
      box.className = "screen-pops";
      box.setAttribute("aria-live", "assertive");
      document.body.appendChild(box);
    }
    return box;
  }

  // The calls cover the right side of the page until dismissed; this button hides them all for
  // a while (a new call shows them again) and says how many are hidden.
  var toggle = document.getElementById("screen-pop-toggle");

  function minimised() {
    return container().classList.contains("screen-pops-minimised");
  }

  function refreshToggle() {
    var count = container().querySelectorAll(LIVE).length;
    if (count === 0) container().classList.remove("screen-pops-minimised");
    if (!toggle) return;
    var hidden = minimised();
    var focused = document.activeElement === toggle;
    toggle.hidden = count === 0;
    // The last call went (ended, dismissed) with the keyboard on this button: hidden, it would
    // drop focus to <body>, so the page takes it, as when the last pop is dismissed.
    if (toggle.hidden && focused) focusPage();
    toggle.setAttribute("aria-expanded", String(!hidden));
    toggle.textContent = hidden ? "Show " + count + (count === 1 ? " call" : " calls") : "Hide calls";
  }

  function focusPage() {
    var main = document.getElementById("main");
    if (main) main.focus();
  }

  function setMinimised(hide) {
    container().classList.toggle("screen-pops-minimised", hide);
    refreshToggle();
  }

  if (toggle) {
    toggle.addEventListener("click", function () {
      setMinimised(!minimised());
    });
  }

  function dismissed() {
    try {
      return JSON.parse(window.sessionStorage.getItem(STORAGE_KEY) || "[]");
    } catch (error) {
      return [];
    }
  }

  function dismiss(popId) {
    var ids = dismissed();
    ids.push(popId);
    // Only the latest few matter: older calls have stopped popping anyway.
    window.sessionStorage.setItem(STORAGE_KEY, JSON.stringify(ids.slice(-50)));
  }

  function show(html) {
    var template = document.createElement("template");
    template.innerHTML = html;
    var box = container();
    var skip = dismissed();
    var pops = template.content.querySelectorAll(".screen-pop");
    var arrived = false;
    // The server sends the newest first; insert oldest first so the newest ends on top.
    for (var i = pops.length - 1; i >= 0; i--) {
      var pop = pops[i];
      var id = pop.dataset.popId;
      if (skip.indexOf(id) !== -1) continue;
      var shown = box.querySelector('.screen-pop[data-pop-id="' + id + '"]');
      // A pop is sent again until it is 5 s old. The box is an assertive live region: each
      // node put in it is read out whole, so a pop whose state did not change stays as it is
      // (its HTML differs anyway: a new CSRF token). Nor is the one the keyboard is in
      // replaced: focus would drop to <body> under the agent's hands. A change of state also
      // comes as an update (below, the server sends one for every pop whose state the poll's
      // "shown" said otherwise), which changes the pop's note in place.
      if (shown && (shown.dataset.state === pop.dataset.state || shown.contains(document.activeElement))) continue;
      if (shown && shown.hasAttribute("data-kept")) pop.setAttribute("data-kept", "");
      if (pop.dataset.state === "yours") pop.setAttribute("data-kept", "");
      if (shown) box.replaceChild(pop, shown);
      else box.insertBefore(pop, box.firstChild);
      arrived = arrived || !shown;
      if (window.htmx) window.htmx.process(pop);
    }
    var updates = template.content.querySelectorAll("template.screen-pop-update");
    for (var j = 0; j < updates.length; j++) update(updates[j]);
    // A new call is worth seeing even with the others hidden.
    setMinimised(minimised() && !arrived);
  }

  // The agent is reading the pop: the keyboard is in it, or the pointer is over it.
  function held(pop) {
    return pop.contains(document.activeElement) || pop.matches(":hover");
  }

  function goesNow(pop) {
    return LEAVING.indexOf(pop.dataset.state) !== -1 && !pop.hasAttribute("data-kept") && !held(pop);
  }

  // A pop that goes fades out first; it takes no focus or clicks meanwhile. With reduced
  // motion there is no fade to watch: it goes at once, and the pops below it move up at once
  // (kept for the fade, an invisible pop held their place).
  function leave(pop) {
    if (reducedMotion && reducedMotion.matches) {
      pop.remove();
      refreshToggle();
      return;
    }
    pop.classList.add("screen-pop-leaving");
    pop.setAttribute("inert", "");
    refreshToggle();
    window.setTimeout(function () {
      pop.remove();
      refreshToggle();
    }, FADE_MS);
  }

  // The server says a pop the page shows is in another state now: its note (answered, ended)
  // goes in, and the pop goes unless the agent is in it or kept it.
  function update(change) {
    var pop = container().querySelector('.screen-pop[data-pop-id="' + change.dataset.popId + '"]');
    if (!pop || pop.classList.contains("screen-pop-leaving")) return;
    pop.dataset.state = change.dataset.state;
    if (change.dataset.state === "yours") pop.setAttribute("data-kept", "");
    var goes = goesNow(pop);
    var old = pop.querySelector(".screen-pop-state");
    var note = change.content.querySelector(".screen-pop-state");
    if (note) {
      note = document.importNode(note, true);
      // Going at once, it is seen as it fades; read out to every agent's screen reader, each
      // call's end would interrupt whatever they were hearing.
      if (goes) note.setAttribute("aria-hidden", "true");
      if (old) old.replaceWith(note);
      else pop.querySelector(".screen-pop-head").after(note);
    } else if (old) {
      old.remove();
    }
    if (goes) leave(pop);
  }

  // After each poll: a pop whose call is over goes once the agent has left it.
  function sweep() {
    var pops = container().querySelectorAll(LIVE);
    for (var i = 0; i < pops.length; i++) {
      if (goesNow(pops[i])) leave(pops[i]);
    }
  }

  // "12:ringing,13:answered": the pops the page shows and the state each shows, so that the
  // server answers those whose state changed. An ended pop has nothing more to change.
  function shownStates() {
    var pops = container().querySelectorAll(LIVE);
    var parts = [];
    for (var i = 0; i < pops.length && parts.length < MAX_SHOWN; i++) {
      var state = pops[i].dataset.state || "ringing";
      if (state !== "ended") parts.push(pops[i].dataset.popId + ":" + state);
    }
    return parts.join(",");
  }

  // Signed out (the session ended, or the agent signed out in another tab): calls would stop
  // popping with nothing to show for it, so say so. Polling goes on slowly, and the notice
  // goes away once the agent is signed in again (in this tab or another).
  var NOTICE_ID = "screen-pop-signed-out";

  // Back to this page after signing in, as the server's redirect says it (webapp/auth,
  // sign_in_url): the page's URL is percent-encoded again in next, and gunicorn refuses a
  // request line past its limit with its own page, not the form. The form is posted back
  // to the same URL, so that line must fit; if not, next keeps the path alone, or goes.
  function signInHref() {
    var candidates = [window.location.pathname + window.location.search, window.location.pathname];
    for (var i = 0; i < candidates.length; i++) {
      var href = signInUrl + "?next=" + encodeURIComponent(candidates[i]);
      if (("POST " + href + " HTTP/1.1").length <= requestLineLimit) return href;
    }
    return signInUrl;
  }

  function showSignedOut() {
    if (document.getElementById(NOTICE_ID)) return;
    var notice = document.createElement("div");
    notice.id = NOTICE_ID;
    notice.className = "screen-pop screen-pop-notice";
    notice.setAttribute("role", "alert");
    var text = document.createElement("p");
    text.textContent = "You are signed out: incoming calls no longer pop up here.";
    notice.appendChild(text);
    if (signInUrl) {
      var link = document.createElement("a");
      link.className = "button button-primary";
      link.href = signInHref();
      link.textContent = "Sign in again";
      notice.appendChild(link);
    }
    container().insertBefore(notice, container().firstChild);
  }

  function hideSignedOut() {
    var notice = document.getElementById(NOTICE_ID);
    if (notice) notice.remove();
  }

  function schedule() {
    window.setTimeout(poll, delay);
  }

  function poll() {
    var query = [];
    if (cursor !== null) query.push("after=" + encodeURIComponent(cursor));
    var shown = shownStates();
    if (shown) query.push("shown=" + encodeURIComponent(shown));
    var url = pollUrl + (query.length ? "?" + query.join("&") : "");
    // The redirect to the sign-in page is not followed: that page would start a
    // session of its own on every poll.
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" }, redirect: "manual" })
      .then(function (response) {
        var next = response.headers.get("X-Screen-Pop-Cursor");
        // Sent to sign in (a redirect, or a 401), or a page with no cursor: signed out.
        if (response.type === "opaqueredirect" || response.status === 401 || (response.ok && next === null)) {
          showSignedOut();
          delay = SIGNED_OUT_MS;
          return null;
        }
        if (!response.ok) throw new Error("server answered " + response.status);
        hideSignedOut();
        cursor = next;
        delay = INTERVAL_MS;
        return response.status === 204 ? "" : response.text();
      })
      .then(function (html) {
        if (html) show(html);
        if (html !== null) sweep();
        schedule();
      })
      .catch(function () {
        delay = Math.min(delay * 2, MAX_BACKOFF_MS);
        schedule();
      });
  }

  // Dismissed with its button, a pop takes the focus on that button with it: focus goes to the
  // next pop's dismiss button (the one below, else above), else to the page. Focus that was
  // elsewhere (a click that did not focus the button) stays where it was.
  function removeKeepingFocus(pop) {
    var next = pop.nextElementSibling;
    while (next && !next.matches(LIVE)) next = next.nextElementSibling;
    var previous = pop.previousElementSibling;
    while (previous && !previous.matches(LIVE)) previous = previous.previousElementSibling;
    pop.remove();
    refreshToggle();
    var active = document.activeElement;
    if (active && active !== document.body && active.isConnected) return;
    var neighbour = next || previous;
    var button = neighbour && neighbour.querySelector("[data-dismiss-pop]");
    if (button) {
      button.focus();
      return;
    }
    var main = document.getElementById("main");
    if (main) main.focus();
  }

  // A pop the agent clicked in (a link opened in another tab, text selected, a button) is
  // theirs to close: it stays, marked, when its call ends or times out.
  document.addEventListener("pointerdown", function (event) {
    var pop = event.target.closest && event.target.closest(".screen-pop[data-pop-id]");
    if (pop) pop.setAttribute("data-kept", "");
  });

  document.addEventListener("click", function (event) {
    var pop = event.target.closest(".screen-pop[data-pop-id]");
    if (!pop) return;
    // From the keyboard too: Enter on the pop's link or button.
    pop.setAttribute("data-kept", "");
    // Acting on a call (opening the customer, creating one) also means it was seen.
    var action = event.target.closest("[data-dismiss-pop], a, button[type=submit]");
    if (!action) return;
    dismiss(pop.dataset.popId);
    if (action.hasAttribute("data-dismiss-pop")) removeKeepingFocus(pop);
  });

  // Escape dismisses the pop the keyboard is in, or the newest one when focus is on the page
  // itself: <body>, or `main`, where a click on blank space and every dismissal put it (so a
  // second Escape dismisses the next call). Never while focus is on anything else: a field
  // (Escape there belongs to the field), an open form or disclosure (app.js closes those).
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape" || event.defaultPrevented) return;
    var active = document.activeElement;
    var pop = active && active.closest ? active.closest(".screen-pop[data-pop-id]") : null;
    var onPage = !active || active === document.body || active === document.getElementById("main");
    if (!pop && !onPage) return;
    // Hidden calls are out of sight: Escape does not dismiss one unseen.
    if (!pop && !minimised()) pop = container().querySelector(LIVE);
    if (!pop) return;
    event.preventDefault();
    dismiss(pop.dataset.popId);
    pop.remove();
    refreshToggle();
    var main = document.getElementById("main");
    if (main) main.focus();
  });

  poll();
})();
