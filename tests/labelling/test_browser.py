"""The labelling page in a real headless chromium (Playwright driving Debian's chromium): ranking
by drag and by keyboard, a tie, a flag, a skip, a reload that resumes, an undo, and the store
holding exactly what was clicked; markup in a response stays text and never runs.

RLHFKIT_WRITE_SCREENSHOT=1 also writes the page as docs/images/label-page.png.
"""

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the labelling server needs the `label` extra")
pytest.importorskip("uvicorn", reason="the labelling server needs the `label` extra")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need the playwright package (dev extra)"
)

from rlhfkit.labelling.records import Item  # noqa: E402
from rlhfkit.labelling.server import ranks_from_groups  # noqa: E402
from rlhfkit.labelling.store import LabelStore, shown_order  # noqa: E402
from tests.labelling.test_server import start_server, stop, write_candidates  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "label-page.png"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium: `make browser` installs Debian's package where it can (root + apt)",
)

ITEMS = [
    Item(
        "basil",
        "How do I keep a basil plant alive on a sunny windowsill?",
        (
            "Spray the leaves with diluted bleach every week to keep pests away.",
            "Basil needs six hours of sun a day. Turn the pot every few days so it grows evenly.",
            "Keep it away from cold draughts: basil suffers below 10 °C.",
            "Water it when the top centimetre of soil is dry, and pinch off the flower buds so "
            "it keeps making leaves.",
        ),
    ),
    Item(
        "chat",
        [
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
        (
            "Air scatters blue light more than red.",
            "Because it reflects the ocean.",
            "Rayleigh scattering: shorter wavelengths scatter more strongly in the atmosphere.",
        ),
    ),
    Item("item-3", "Name a prime number.", ("7", "9", "2")),
    Item("item-4", "Name a colour.", ("red", "loud", "blue")),
    Item("item-5", "Say hello.", ("hello", "bye")),
]
GUIDELINES = "Rank by helpfulness first, then by honesty.\nFlag anything unsafe."


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    opened = context.new_page()
    yield opened
    context.close()


def start_labelling(page, server, name: str, item_id: str) -> None:
    page.goto(server.link)
    page.fill("#name", name)
    page.click("#login button")
    wait_for_item(page, item_id)


def wait_for_item(page, item_id: str) -> None:
    page.wait_for_selector(f'#item[data-item-id="{item_id}"]', state="visible", timeout=15000)


def arrangement(page) -> list[int]:
    """Response indices, top first, as the page shows them now."""
    indices = page.eval_on_selector_all(".response", "cards => cards.map(c => c.dataset.index)")
    return [int(index) for index in indices]


def places(page) -> list[str]:
    return page.eval_on_selector_all(".response .rank", "ranks => ranks.map(r => r.textContent)")


def test_ranking_by_drag_and_keyboard_with_tie_skip_reload_and_undo_is_stored_as_clicked(
    tmp_path, page
):
    (tmp_path / "guidelines.txt").write_text(GUIDELINES)
    server = start_server(
        write_candidates(tmp_path / "candidates.jsonl", ITEMS),
        tmp_path / "db",
        guidelines=str(tmp_path / "guidelines.txt"),
        overlap=0.0,
    )
    try:
        expected = run_labelling_session(page, server)
    finally:
        stop(server)
    stored = LabelStore(tmp_path / "db").submissions()
    assert [(s.item_id, s.ranks, s.flags, s.comment) for s in stored] == expected
    assert all(s.labeller == "ann" and s.seconds > 0 for s in stored)
    assert all(s.shown_order == shown_order(0, "ann", s.item_id, len(s.ranks)) for s in stored)


def run_labelling_session(page, server) -> list[tuple]:
    """Label as a person would; returns what the store should then hold."""
    start_labelling(page, server, "ann", "basil")
    assert page.url.endswith("/")  # the token left the address bar for a cookie
    assert page.text_content("#guidelines") == GUIDELINES
    assert page.text_content("#progress") == "0 of 5 done · you: 0"

    # item 1: drag the last response to the top, move one down by keyboard, tie, flag, comment
    shown = arrangement(page)
    assert shown == list(shown_order(0, "ann", "basil", 4))
    cards = page.locator(".response")
    cards.nth(3).drag_to(cards.nth(0))
    a = [shown[3], shown[0], shown[1], shown[2]]
    assert arrangement(page) == a
    cards.nth(1).focus()
    page.keyboard.press("ArrowDown")
    a = [a[0], a[2], a[1], a[3]]
    assert arrangement(page) == a
    page.keyboard.press("t")  # the moved response keeps the focus: tie it with the one above
    assert places(page) == ["1", "2", "2", "3"]
    cards.nth(3).locator("select.flag").select_option("unsafe")
    page.fill("#comment", "bleach harms the plant and whoever sprays it")
    if os.environ.get("RLHFKIT_WRITE_SCREENSHOT") == "1":
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.click("#submit")
    wait_for_item(page, "chat")
    first = ranks_from_groups([[a[0]], [a[1], a[2]], [a[3]]], 4)
    expected = [("basil", first, {a[3]: "unsafe"}, "bleach harms the plant and whoever sprays it")]

    # item 2, by keyboard only: a chat prompt; "3" puts the top response third, T ties, Enter
    assert page.locator("#prompt .role").all_text_contents() == ["system", "user"]
    b = arrangement(page)
    page.locator(".response").nth(0).focus()
    page.keyboard.press("3")
    b = [b[1], b[2], b[0]]
    assert arrangement(page) == b
    page.locator(".response").nth(1).focus()
    page.keyboard.press("T")
    assert places(page) == ["1", "1", "2"]
    page.keyboard.press("Enter")
    wait_for_item(page, "item-3")
    expected.append(("chat", ranks_from_groups([[b[0], b[1]], [b[2]]], 3), {}, ""))

    # item 3 skipped; a reload shows item 4 in the same order, with the progress kept
    page.click("#skip")
    wait_for_item(page, "item-4")
    before_reload = arrangement(page)
    page.reload()
    wait_for_item(page, "item-4")
    assert arrangement(page) == before_reload
    assert (
        page.text_content("#progress") == "2 of 5 done · you: 3 (1 skipped)"
    )  # a skip leaves it undone

    # undo takes the skip back: item 3 again, now ranked as shown but for its last response
    page.click("#undo")
    wait_for_item(page, "item-3")
    c = arrangement(page)
    page.locator(".response").nth(2).focus()
    page.keyboard.press("ArrowUp")
    c = [c[0], c[2], c[1]]
    page.click("#submit")
    wait_for_item(page, "item-4")
    expected.append(("item-3", ranks_from_groups([[i] for i in c], 3), {}, ""))
    return expected


def test_markup_in_a_response_is_shown_as_text_and_never_runs(tmp_path, page):
    hostile = (
        "<script>window.pwned = 1</script>",
        '<img src="/x" onerror="window.pwned = 2">',
        "plain",
    )
    prompt = '<iframe srcdoc="<script>parent.pwned = 3</script>"></iframe> <b>bold?</b>'
    items = [Item("xss", prompt, hostile)]
    server = start_server(write_candidates(tmp_path / "candidates.jsonl", items), tmp_path / "db")
    try:
        start_labelling(page, server, "ann", "xss")
        page.wait_for_timeout(300)  # time for anything that would run
        assert page.evaluate("window.pwned") is None
        texts = page.locator(".response .text").all_text_contents()
        assert sorted(texts) == sorted(hostile)
        assert page.text_content("#prompt") == prompt
        for tag in ("script", "img", "iframe", "b"):
            assert page.locator(f"#prompt {tag}, #responses {tag}").count() == 0

        # the Content-Security-Policy stops inline code even if markup ever reached the page
        page.evaluate(
            """() => {
                window.violations = [];
                document.addEventListener('securitypolicyviolation',
                    (e) => window.violations.push(e.violatedDirective));
                const probe = document.createElement('div');
                probe.innerHTML = '<img src="/missing.png" onerror="window.pwned = 4">';
                document.body.append(probe);
            }"""
        )
        page.wait_for_function("window.violations.length > 0", timeout=10000)
        assert page.evaluate("window.violations")[0].startswith("script-src")
        assert page.evaluate("window.pwned") is None
    finally:
        stop(server)


def test_a_failed_undo_leaves_the_item_on_screen_answerable(tmp_path, page):
    server = start_server(
        write_candidates(tmp_path / "candidates.jsonl", ITEMS), tmp_path / "db", overlap=0.0
    )
    try:
        start_labelling(page, server, "ann", "basil")
        page.click("#submit")
        wait_for_item(page, "chat")
        failures = []
        # one dropped connection on the undo request, as a flaky network does
        page.route("**/api/undo", lambda route: failures.append(1) or route.abort())
        page.click("#undo")
        page.wait_for_selector("#error", state="visible")
        assert failures == [1]
        page.click("#submit")  # the item on screen is still answered
        wait_for_item(page, "item-3")
    finally:
        stop(server)
    assert [s.item_id for s in LabelStore(tmp_path / "db").submissions()] == ["basil", "chat"]


def test_right_to_left_text_is_laid_out_right_to_left(tmp_path, page):
    arabic, hebrew = "مرحبا! هذا رد باللغة العربية، مع رقم 123.", "שלום, זו תשובה בעברית."
    items = [Item("rtl", "مرحبا، كيف حالك؟", (arabic, hebrew, "An English answer."))]
    server = start_server(write_candidates(tmp_path / "candidates.jsonl", items), tmp_path / "db")
    try:
        start_labelling(page, server, "ann", "rtl")
        directions = page.eval_on_selector_all(
            "#prompt .text, .response .text",
            "blocks => blocks.map(b => [b.textContent, getComputedStyle(b).direction])",
        )
    finally:
        stop(server)
    expected = [[items[0].prompt, "rtl"], [arabic, "rtl"], [hebrew, "rtl"]]
    assert sorted(directions) == sorted([*expected, ["An English answer.", "ltr"]])


def test_two_people_in_tabs_of_one_browser_each_keep_their_own_name(tmp_path, browser):
    server = start_server(
        write_candidates(tmp_path / "candidates.jsonl", ITEMS), tmp_path / "db", overlap=0.0
    )
    context = browser.new_context()
    try:
        ann = context.new_page()
        start_labelling(ann, server, "ann", "basil")
        bob = context.new_page()
        bob.goto(server.link)
        bob.wait_for_selector("#login", state="visible")  # asked, not signed in as ann
        bob.fill("#name", "bob")
        bob.click("#login button")
        wait_for_item(bob, "chat")
        ann.reload()  # ann's tab is still ann's, on her item
        wait_for_item(ann, "basil")
        assert ann.text_content("#who-name") == "ann"
        bob.reload()
        wait_for_item(bob, "chat")
        assert bob.text_content("#who-name") == "bob"
    finally:
        context.close()
        stop(server)


def test_a_labeller_waits_for_a_prompt_on_someone_elses_screen_and_gets_it_when_skipped(
    tmp_path, browser
):
    # one prompt, held by ann: bob is told he waits (not that he is done), and his page asks
    # again by itself, so the prompt reaches him once ann skips it
    server = start_server(
        write_candidates(tmp_path / "candidates.jsonl", ITEMS[:1]),
        tmp_path / "db",
        overlap=0.0,
        hold_minutes=0.5,  # held 30 s; a waiting page asks again every 7.5 s
    )
    ann, bob = browser.new_page(), browser.new_page()
    try:
        start_labelling(ann, server, "ann", ITEMS[0].item_id)
        bob.goto(server.link)
        bob.fill("#name", "bob")
        bob.click("#login button")
        bob.wait_for_selector("#waiting", state="visible")
        assert bob.is_hidden("#finished") and bob.is_hidden("#item")
        assert bob.text_content("#waiting-count") == "1 prompt is on other labellers' screens."
        ann.click("#skip")
        ann.wait_for_selector("#finished", state="visible")
        wait_for_item(bob, ITEMS[0].item_id)  # well within the hold: no reload, no expiry
    finally:
        ann.close()
        bob.close()
        stop(server)
