"""The screen-pop in headless Chromium: a call arrives at gunicorn, the agent's open page pops."""

import re

from playwright.sync_api import expect

from tests.browser.conftest import sign_in_through_the_form
from tests.builders import AGENT_EMAIL, post_json


def test_a_call_pops_the_caller_on_the_open_dashboard(signed_in_page, live_server, tmp_path):
    page = signed_in_page
    base = live_server.url
    marty = post_json(
        base,
        "/events",
        {
            "channel": "email",
            "direction": "inbound",
            "email": "marty@hillvalley.edu",
            "phoneNumber": "+1 555 0100",
            "name": "Marty McFly",
            "summary": "Question about the flux capacitor",
        },
    )["event"]["customerId"]
    post_json(base, "/events", {"channel": "sms", "direction": "inbound", "email": "biff@x.io"})
    voucher = post_json(
        base,
        "/vouchers/generate",
        {
            "email": "marty@hillvalley.edu",
            "offer_name": "Time travel",
            "discount": 15,
            "expiry": "2099-12-31T23:59:59Z",
        },
    )

    # The agent is on another dashboard page when the phone rings.
    page.goto("/audit")
    call = post_json(base, "/calls/incoming", {"phoneNumber": "15550100", "callId": "ring-1"})
    assert call["match"] == "one"

    pop = page.locator(f'.screen-pop[data-pop-id="{call["popId"]}"]')
    expect(pop).to_be_visible(timeout=5000)
    expect(pop.get_by_role("heading", name="Marty McFly")).to_be_visible()
    expect(pop).to_contain_text("marty@hillvalley.edu")
    expect(pop).to_contain_text("+1 555 0100")
    expect(pop).to_contain_text("Question about the flux capacitor")
    expect(pop).not_to_contain_text("biff@x.io")
    expect(pop).to_contain_text(voucher["code"])
    expect(pop).to_contain_text("Time travel · 15%")
    page.screenshot(path=str(tmp_path / "screen-pop.png"))

    pop.get_by_role("link", name=f"Open customer #{marty}").click()
    expect(page).to_have_url(re.compile(rf"/customers/{marty}$"))
    activity = page.locator("#activity")
    expect(activity).to_contain_text("Inbound call")
    expect(activity).to_contain_text("Question about the flux capacitor")
    assert page.console_errors == []


def test_an_unknown_caller_becomes_a_customer_in_one_click(signed_in_page, live_server):
    page = signed_in_page
    call = post_json(live_server.url, "/calls/incoming", {"phoneNumber": "+44 20 7946 0000"})
    assert call["match"] == "none"

    pop = page.locator(f'.screen-pop[data-pop-id="{call["popId"]}"]')
    expect(pop.get_by_role("heading", name="Unknown caller")).to_be_visible(timeout=5000)
    pop.get_by_role("button", name="Create customer").click()

    expect(page).to_have_url(re.compile(r"/customers/\d+$"))
    expect(page.locator("#customer-header")).to_contain_text("+44 20 7946 0000")
    expect(page.locator("#activity")).to_contain_text("Inbound call")
    # Dismissed pops stay dismissed on the next page.
    page.goto("/")
    another = post_json(live_server.url, "/calls/incoming", {"phoneNumber": "+44 20 7946 0001"})
    second = page.locator(f'.screen-pop[data-pop-id="{another["popId"]}"]')
    expect(second).to_be_visible(timeout=5000)
    second.get_by_role("button", name="Dismiss").click()
    expect(second).to_have_count(0)
    page.reload()
    page.wait_for_timeout(2500)
    expect(second).to_have_count(0)
    assert page.console_errors == []


def test_a_signed_out_tab_says_calls_stopped_popping_and_resumes_after_sign_in(
    signed_in_page, live_server
):
    page = signed_in_page
    page.goto("/audit")
    # The agent signs out in another tab: every session of theirs ends, this one too.
    other = page.context.new_page()
    other.goto("/")
    other.get_by_role("button", name="Sign out").click()
    expect(other.get_by_role("heading", name="Sign in")).to_be_visible()

    notice = page.locator("#screen-pop-signed-out")
    expect(notice).to_contain_text("You are signed out: incoming calls no longer pop up here.")
    expect(notice.get_by_role("link", name="Sign in again")).to_have_attribute(
        "href", "/sign-in?next=%2Faudit"
    )

    # Signed in again elsewhere: the notice goes, and calls pop here again.
    sign_in_through_the_form(other)
    expect(notice).to_have_count(0, timeout=15_000)
    call = post_json(live_server.url, "/calls/incoming", {"phoneNumber": "5550199"})
    expect(page.locator(f'.screen-pop[data-pop-id="{call["popId"]}"]')).to_be_visible()
    assert [e for e in page.console_errors if "Failed to load" not in e] == []


def test_sign_in_again_from_a_long_search_reaches_the_form(signed_in_page, live_server):
    page = signed_in_page
    page.goto("/?q=" + "\U0001f600" * 320)
    other = page.context.new_page()
    other.goto("/")
    other.get_by_role("button", name="Sign out").click()
    expect(other.get_by_role("heading", name="Sign in")).to_be_visible()

    # The page's URL percent-encoded again in next made a link gunicorn refused (414):
    # the link keeps the page's path alone.
    link = page.locator("#screen-pop-signed-out").get_by_role("link", name="Sign in again")
    expect(link).to_have_attribute("href", "/sign-in?next=%2F")
    link.click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert [e for e in page.console_errors if "Failed to load" not in e] == []


def ring_three_named_callers(base: str) -> list[dict]:
    """Three known callers, each with a few engagements, calling at once: three tall pops."""
    calls = []
    for n, name in enumerate(["Marty McFly", "Emmett Brown", "Lorraine Baines"]):
        phone = f"+1 555 010{n}"
        for summary in ["Where is my order?", "Refund please", "Thanks!"]:
            post_json(
                base,
                "/events",
                {
                    "channel": "sms",
                    "direction": "inbound",
                    "email": f"caller{n}@hillvalley.edu",
                    "phoneNumber": phone,
                    "name": name,
                    "summary": summary,
                },
            )
        call = post_json(base, "/calls/incoming", {"phoneNumber": phone, "callId": f"stack-{n}"})
        calls.append({"name": name, **call})
    return calls


def test_three_pops_scroll_inside_the_window(signed_in_page, live_server):
    page = signed_in_page
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/audit")
    ring_three_named_callers(live_server.url)
    pops = page.locator(".screen-pop[data-pop-id]")
    expect(pops).to_have_count(3, timeout=8000)
    box = page.locator("#screen-pops")
    assert box.evaluate("b => b.getBoundingClientRect().bottom") <= 900
    assert box.evaluate("b => b.scrollHeight > b.clientHeight"), "the pops fit: nothing tested"
    # The wheel scrolls the stack, and the bottom pop can be brought wholly into view.
    pops.first.hover()
    page.mouse.wheel(0, 400)
    page.wait_for_function("() => document.getElementById('screen-pops').scrollTop > 0")
    pops.last.locator(".screen-pop-close").scroll_into_view_if_needed()
    bottom = pops.last.evaluate("p => p.getBoundingClientRect().bottom")
    assert bottom <= 900, f"the last pop ends at y={bottom}, below the window"
    # Beside the stack, the page still takes clicks.
    page.get_by_role("link", name="Offers").click()
    expect(page.get_by_role("heading", name="Offers")).to_be_visible()
    assert page.console_errors == []


def test_on_a_phone_the_pops_leave_the_page_usable(signed_in_page, live_server):
    page = signed_in_page
    page.set_viewport_size({"width": 375, "height": 812})
    page.goto("/audit")
    ring_three_named_callers(live_server.url)
    expect(page.locator(".screen-pop[data-pop-id]")).to_have_count(3, timeout=8000)
    height = page.locator("#screen-pops").evaluate("b => b.getBoundingClientRect().height")
    assert height <= 0.6 * 812, f"the pops cover {height} px of the 812 px screen"
    # A sheet with an edge: where the last call is cut off, the page's text under the
    # stack no longer showed through and ran into the call's.
    background = page.locator("#screen-pops").evaluate("b => getComputedStyle(b).backgroundColor")
    assert background not in ("transparent", "rgba(0, 0, 0, 0)"), background
    # The lower part of the screen is the page, not a pop.
    assert page.evaluate("() => !document.elementFromPoint(187, 760).closest('#screen-pops')"), (
        "a pop covers the bottom of the screen"
    )
    assert page.console_errors == []


def test_dismissing_a_pop_with_its_button_hands_focus_to_the_next_one(signed_in_page, live_server):
    page = signed_in_page
    page.goto("/audit")
    calls = ring_three_named_callers(live_server.url)
    pops = page.locator(".screen-pop[data-pop-id]")
    expect(pops).to_have_count(3, timeout=8000)
    # Newest on top; each dismiss button says whose call it closes.
    for pop, call in zip(pops.all(), reversed(calls), strict=True):
        expect(pop.get_by_role("button", name=f"Dismiss call from {call['name']}")).to_be_visible()

    # Dismissed from the keyboard, the middle pop hands focus to the one below it...
    page.get_by_role("button", name=f"Dismiss call from {calls[1]['name']}").focus()
    page.keyboard.press("Enter")
    expect(pops).to_have_count(2)
    expect(page.get_by_role("button", name=f"Dismiss call from {calls[0]['name']}")).to_be_focused()
    # ...the bottom one to the one above it, and the last one to the page.
    page.keyboard.press("Enter")
    expect(pops).to_have_count(1)
    expect(page.get_by_role("button", name=f"Dismiss call from {calls[2]['name']}")).to_be_focused()
    page.keyboard.press("Enter")
    expect(pops).to_have_count(0)
    expect(page.locator("#main")).to_be_focused()
    # An unknown caller's pop is named after the number.
    call = post_json(live_server.url, "/calls/incoming", {"phoneNumber": "+44 20 7946 0003"})
    pop = page.locator(f'.screen-pop[data-pop-id="{call["popId"]}"]')
    expect(pop.get_by_role("button", name="Dismiss call from +44 20 7946 0003")).to_be_visible()
    assert page.console_errors == []


def test_a_pop_sent_again_by_the_poll_keeps_the_keyboard_focus(signed_in_page, live_server):
    page = signed_in_page
    page.goto("/audit")
    call = post_json(live_server.url, "/calls/incoming", {"phoneNumber": "+44 20 7946 0002"})
    dismiss = page.locator(f'.screen-pop[data-pop-id="{call["popId"]}"] .screen-pop-close')
    expect(dismiss).to_be_visible(timeout=5000)
    dismiss.focus()
    # The poll sends a pop again until it is 5 s old; the one with focus is kept as it is.
    page.wait_for_timeout(2500)
    expect(dismiss).to_be_focused()
    assert page.console_errors == []


def test_the_agent_can_hide_the_calls_and_a_new_call_shows_them_again(signed_in_page, live_server):
    page = signed_in_page
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/audit")
    toggle = page.locator("#screen-pop-toggle")
    expect(toggle).to_be_hidden()
    ring_three_named_callers(live_server.url)
    pops = page.locator(".screen-pop[data-pop-id]")
    expect(pops).to_have_count(3, timeout=8000)
    # Where the top pop sits, the page is covered...
    box = pops.first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    covered = "([x, y]) => !!document.elementFromPoint(x, y).closest('#screen-pops')"
    assert page.evaluate(covered, [x, y])

    # ...until the agent hides the calls: the page under them takes clicks again.
    expect(toggle).to_have_text("Hide calls")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    toggle.click()
    expect(pops.first).to_be_hidden()
    expect(toggle).to_have_text("Show 3 calls")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(toggle).to_be_focused()
    assert not page.evaluate(covered, [x, y])
    # Escape on the page does not dismiss a call the agent cannot see...
    page.locator("#main").focus()
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    expect(pops).to_have_count(3)

    # Shown again from the keyboard...
    toggle.focus()
    page.keyboard.press("Enter")
    expect(pops).to_have_count(3)
    for pop in pops.all():
        expect(pop).to_be_visible()
    expect(toggle).to_have_text("Hide calls")
    # ...where Escape on the page dismisses the newest (so the one above could have).
    page.locator("#main").focus()
    page.keyboard.press("Escape")
    expect(pops).to_have_count(2)

    # Hidden calls come back with a new call, which is worth seeing.
    toggle.click()
    expect(toggle).to_have_text("Show 2 calls")
    call = post_json(live_server.url, "/calls/incoming", {"phoneNumber": "+44 20 7946 0004"})
    expect(page.locator(f'.screen-pop[data-pop-id="{call["popId"]}"]')).to_be_visible()
    expect(pops).to_have_count(3)
    expect(pops.last).to_be_visible()
    expect(toggle).to_have_text("Hide calls")

    # With every call dismissed, the button goes too.
    for _ in range(3):
        pops.first.locator(".screen-pop-close").click()
    expect(pops).to_have_count(0)
    expect(toggle).to_be_hidden()
    assert page.console_errors == []


# When a pop goes: the phone system says the call was answered or ended (POST /calls/status),
# or it times out. See docs/engagements.md, "When a pop goes".


def ring(base: str, phone: str, call_id: str) -> dict:
    return post_json(base, "/calls/incoming", {"phoneNumber": phone, "callId": call_id})


def call_status(base: str, call_id: str, status: str, **extra) -> dict:
    return post_json(base, "/calls/status", {"callId": call_id, "status": status, **extra})


def pointer_off_the_calls(page) -> None:
    """The agent's pointer rests on the page, away from the stack of calls."""
    page.mouse.move(5, 600)


def test_a_pop_leaves_when_its_call_ends_but_not_while_the_keyboard_is_in_it(
    signed_in_page, live_server, tmp_path
):
    page = signed_in_page
    base = live_server.url
    page.goto("/audit")
    pointer_off_the_calls(page)
    calls = [
        post_json(
            base, "/calls/incoming", {"phoneNumber": f"+44 20 7946 00{n}5", "callId": f"e-{n}"}
        )
        for n in range(2)
    ]
    read, other = (page.locator(f'.screen-pop[data-pop-id="{c["popId"]}"]') for c in calls)
    expect(read).to_be_visible(timeout=5000)
    expect(other).to_be_visible()
    # The agent is reading the first call: the keyboard is in it.
    dismiss = read.locator(".screen-pop-close")
    dismiss.focus()

    for n in range(2):
        call_status(base, f"e-{n}", "ended")
    # The other call goes from the screen on the next poll...
    expect(other).to_have_count(0, timeout=5000)
    # ...the one the agent is in stays, marked, with the keyboard where it was.
    expect(read).to_have_attribute("data-state", "ended")
    expect(read.locator(".screen-pop-state")).to_contain_text("Call ended")
    page.wait_for_timeout(2500)
    expect(read).to_be_visible()
    expect(dismiss).to_be_focused()
    page.screenshot(path=str(tmp_path / "ended-while-focused.png"))

    # Once the agent leaves it, it goes with the next poll.
    page.locator("#main").focus()
    expect(read).to_have_count(0, timeout=5000)
    expect(page.locator("#main")).to_be_focused()
    expect(page.locator("#screen-pop-toggle")).to_be_hidden()
    assert page.console_errors == []


def test_the_agent_who_answered_keeps_the_pop_and_the_others_lose_it(
    signed_in_page, live_server, browser, tmp_path
):
    from tests.browser.conftest import _new_tab
    from tests.builders import AGENT_EMAIL, AGENT_PASSWORD, make_agent

    make_agent("dana@support.example")
    dana = _new_tab(browser, live_server)
    sign_in_through_the_form(dana, "dana@support.example", AGENT_PASSWORD)
    page = signed_in_page
    base = live_server.url
    for tab in (page, dana):
        tab.goto("/audit")
        pointer_off_the_calls(tab)
    taken, unnamed, ringing = ring_three_named_callers(base)
    mine = page.locator(f'.screen-pop[data-pop-id="{taken["popId"]}"]')
    hers = dana.locator(f'.screen-pop[data-pop-id="{taken["popId"]}"]')
    for tab in (page, dana):
        expect(tab.locator(".screen-pop[data-pop-id]")).to_have_count(3, timeout=8000)

    # This agent takes the first call; nobody says who took the second.
    call_status(base, "stack-0", "answered", agent=AGENT_EMAIL)
    call_status(base, "stack-1", "answered")
    expect(mine.locator(".screen-pop-state")).to_have_text(re.compile(r"^You answered "))
    expect(mine).to_have_attribute("data-state", "yours")
    expect(hers).to_have_count(0, timeout=5000)
    for tab in (page, dana):
        other = tab.locator(f'.screen-pop[data-pop-id="{unnamed["popId"]}"]')
        expect(other.locator(".screen-pop-state")).to_have_text(re.compile(r"^Answered "))
        expect(other).to_be_visible()
        expect(tab.locator(f'.screen-pop[data-pop-id="{ringing["popId"]}"]')).to_be_visible()
    page.locator("#screen-pops").evaluate("box => { box.scrollTop = 0; }")
    page.screenshot(path=str(tmp_path / "answered.png"))

    # The call ends: this agent's pop stays, marked, until they dismiss it (they may be
    # writing up the call); the unnamed answer's pops go from every screen.
    call_status(base, "stack-0", "ended")
    call_status(base, "stack-1", "ended", durationSeconds=75)
    expect(mine.locator(".screen-pop-state")).to_contain_text("Call ended")
    expect(mine.locator(".screen-pop-state")).to_contain_text("answered by you")
    for tab in (page, dana):
        unnamed_pop = tab.locator(f'.screen-pop[data-pop-id="{unnamed["popId"]}"]')
        expect(unnamed_pop).to_have_count(0, timeout=5000)
    page.wait_for_timeout(2000)
    expect(mine).to_be_visible()
    page.screenshot(path=str(tmp_path / "answered-then-ended.png"))
    mine.get_by_role("button", name=f"Dismiss call from {taken['name']}").click()
    expect(mine).to_have_count(0)
    # The call still ringing stays on both screens.
    expect(page.locator(".screen-pop[data-pop-id]")).to_have_count(1)
    expect(dana.locator(".screen-pop[data-pop-id]")).to_have_count(1)
    assert page.console_errors == [] and dana.console_errors == []
    dana.context.close()


def test_untouched_pops_time_out_and_one_the_agent_clicked_in_or_points_at_stays(
    signed_in_page, live_server, app
):
    from datetime import timedelta

    from sqlalchemy import update

    from webapp.engagements.models import ScreenPop
    from webapp.extensions import db
    from webapp.models import utcnow

    page = signed_in_page
    base = live_server.url
    page.goto("/audit")
    calls = [
        post_json(
            base, "/calls/incoming", {"phoneNumber": f"+44 20 7946 01{n}6", "callId": f"t-{n}"}
        )
        for n in range(3)
    ]
    clicked, untouched, pointed = (
        page.locator(f'.screen-pop[data-pop-id="{c["popId"]}"]') for c in calls
    )
    for pop in (clicked, untouched, pointed):
        expect(pop).to_be_visible(timeout=5000)
    # The agent clicked in one (selecting its number, say), and rests the pointer on another.
    clicked.locator(".screen-pop-kicker").click()
    pointed.locator(".screen-pop-title").hover()

    # Five minutes pass (SCREEN_POP_TIMEOUT_S), and the phone system never says the calls ended.
    db.session.execute(update(ScreenPop).values(created_at=utcnow() - timedelta(seconds=301)))
    db.session.commit()
    expect(untouched).to_have_count(0, timeout=5000)
    page.wait_for_timeout(2000)
    expect(clicked).to_be_visible()
    expect(pointed).to_be_visible()
    expect(pointed).to_have_attribute("data-state", "stale")
    # The pointer moves on: that pop goes; the one clicked in stays until dismissed.
    pointer_off_the_calls(page)
    expect(pointed).to_have_count(0, timeout=5000)
    page.wait_for_timeout(1500)
    expect(clicked).to_be_visible()
    clicked.locator(".screen-pop-close").click()
    expect(clicked).to_have_count(0)
    assert page.console_errors == []


def test_the_last_call_going_hands_focus_from_the_hide_calls_button_to_the_page(
    signed_in_page, live_server
):
    page = signed_in_page
    base = live_server.url
    page.goto("/audit")
    pointer_off_the_calls(page)
    first, second = (ring(base, f"+44 20 7946 02{n}7", f"h-{n}") for n in range(2))
    for call in (first, second):
        expect(page.locator(f'.screen-pop[data-pop-id="{call["popId"]}"]')).to_be_visible(
            timeout=5000
        )
    toggle = page.locator("#screen-pop-toggle")
    toggle.focus()
    # One call goes: the button stays, and so does the keyboard.
    call_status(base, "h-0", "ended")
    expect(page.locator(".screen-pop[data-pop-id]")).to_have_count(1, timeout=5000)
    expect(toggle).to_be_focused()
    # The agent hides the other call; it ends too, and the button goes with it. The keyboard
    # goes to the page, as when the last call is dismissed, not to <body>.
    page.keyboard.press("Enter")
    expect(toggle).to_have_text("Show 1 call")
    call_status(base, "h-1", "ended")
    expect(page.locator(".screen-pop[data-pop-id]")).to_have_count(0, timeout=5000)
    expect(toggle).to_be_hidden()
    expect(page.locator("#main")).to_be_focused()
    assert page.console_errors == []


def test_with_reduced_motion_a_pop_that_goes_leaves_at_once(signed_in_page, live_server):
    page = signed_in_page
    base = live_server.url
    page.emulate_media(reduced_motion="reduce")
    page.goto("/audit")
    pointer_off_the_calls(page)
    below, above = (ring(base, f"+44 20 7946 03{n}8", f"m-{n}") for n in range(2))
    kept, going = (page.locator(f'.screen-pop[data-pop-id="{c["popId"]}"]') for c in (below, above))
    expect(page.locator(".screen-pop[data-pop-id]")).to_have_count(2, timeout=5000)
    # Whenever the stack changes, note whether a pop on its way out is still in it: with no
    # fade to watch, an invisible pop held its place for 0.6 s and the calls below it then
    # jumped up.
    page.evaluate(
        """() => {
            window.leavingSeen = false;
            const box = document.getElementById("screen-pops");
            new MutationObserver(() => {
                if (box.querySelector(".screen-pop-leaving")) window.leavingSeen = true;
            }).observe(box, { childList: true, subtree: true, attributes: true });
        }"""
    )
    call_status(base, "m-1", "ended")
    expect(going).to_have_count(0, timeout=5000)
    expect(kept).to_be_visible()
    assert page.evaluate("() => window.leavingSeen") is False
    assert page.console_errors == []


def count_insertions_into_the_live_region(page) -> None:
    """From now on, window.popInsertions[id] counts the times a pop entered #screen-pops."""
    page.evaluate(
        """() => {
            window.popInsertions = {};
            const box = document.getElementById("screen-pops");
            new MutationObserver((records) => {
                for (const record of records) {
                    for (const node of record.addedNodes) {
                        const id = node.dataset && node.dataset.popId;
                        if (id) window.popInsertions[id] = (window.popInsertions[id] || 0) + 1;
                    }
                }
            }).observe(box, { childList: true });
        }"""
    )


def test_a_ringing_call_enters_the_live_region_once_though_the_poll_sends_it_again(
    signed_in_page, live_server
):
    page = signed_in_page
    base = live_server.url
    page.goto("/audit")
    pointer_off_the_calls(page)
    count_insertions_into_the_live_region(page)
    sent = []
    page.on(
        "response",
        lambda r: sent.append(r.status) if "/screen-pops" in r.url and r.status == 200 else None,
    )
    call = ring(base, "+44 20 7946 0409", "once-0")
    pop = page.locator(f'.screen-pop[data-pop-id="{call["popId"]}"]')
    expect(pop).to_be_visible(timeout=5000)
    # The poll sends a call again until it is 5 s old (docs/engagements.md): each time, it
    # went into the assertive live region anew, and screen readers read the call out again.
    page.wait_for_timeout(6500)
    assert len(sent) >= 3, f"the poll sent the call {len(sent)} times: nothing tested"
    assert page.evaluate("() => window.popInsertions") == {str(call["popId"]): 1}

    # A change of state still reaches the pop: answered by this agent, then ended.
    call_status(base, "once-0", "answered", agent=AGENT_EMAIL)
    expect(pop).to_have_attribute("data-state", "yours", timeout=5000)
    expect(pop.locator(".screen-pop-state")).to_have_text(re.compile(r"^You answered "))
    call_status(base, "once-0", "ended")
    expect(pop.locator(".screen-pop-state")).to_contain_text("Call ended")
    assert page.console_errors == []


def test_a_call_answered_while_the_poll_still_sends_it_shows_the_answer(
    signed_in_page, live_server
):
    page = signed_in_page
    base = live_server.url
    page.goto("/audit")
    pointer_off_the_calls(page)
    count_insertions_into_the_live_region(page)
    call = ring(base, "+44 20 7946 0419", "young-0")
    pop = page.locator(f'.screen-pop[data-pop-id="{call["popId"]}"]')
    expect(pop).to_be_visible(timeout=5000)
    # Within its first 5 s the poll sends the pop whole, now in another state: it changes.
    call_status(base, "young-0", "answered", agent=AGENT_EMAIL)
    expect(pop).to_have_attribute("data-state", "yours", timeout=3000)
    expect(pop.locator(".screen-pop-state")).to_have_text(re.compile(r"^You answered "))
    # Sent again in that state until it is 5 s old, it is not put in the live region again.
    page.wait_for_timeout(5500)
    insertions = page.evaluate("() => window.popInsertions")[str(call["popId"])]
    assert insertions <= 2, f"the pop entered the live region {insertions} times"
    assert page.console_errors == []


def test_escape_on_the_page_dismisses_the_newest_call_each_time(signed_in_page, live_server):
    page = signed_in_page
    page.goto("/audit")
    pointer_off_the_calls(page)
    calls = ring_three_named_callers(live_server.url)
    pops = page.locator(".screen-pop[data-pop-id]")
    expect(pops).to_have_count(3, timeout=8000)
    newest, middle, oldest = (
        page.locator(f'.screen-pop[data-pop-id="{c["popId"]}"]') for c in reversed(calls)
    )
    # Focus on the page itself, as after a dismissal: Escape dismissed nothing there, as the
    # key counted only <body> as the page, so after one Escape the next did nothing.
    page.locator("#main").focus()
    page.keyboard.press("Escape")
    expect(newest).to_have_count(0)
    expect(page.locator("#main")).to_be_focused()
    page.keyboard.press("Escape")
    expect(middle).to_have_count(0)
    expect(oldest).to_be_visible()
    expect(page.locator("#main")).to_be_focused()
    # Focus on anything else on the page (a link): Escape is left to it, the call stays.
    page.get_by_role("link", name="Offers").focus()
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    expect(oldest).to_be_visible()
    page.locator("#main").focus()
    page.keyboard.press("Escape")
    expect(pops).to_have_count(0)
    expect(page.locator("#screen-pop-toggle")).to_be_hidden()
    expect(page.locator("#main")).to_be_focused()
    assert page.console_errors == []
