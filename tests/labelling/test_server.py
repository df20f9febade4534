"""The labelling server, run as `run_label_server` in a subprocess on a free loopback port: the
token guard on every route, the security headers, submissions over HTTP stored as sent, and
nothing acknowledged lost to kill -9."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("starlette", reason="the labelling server needs the `label` extra")
pytest.importorskip("uvicorn", reason="the labelling server needs the `label` extra")

from rlhfkit.errors import RlhfkitError  # noqa: E402
from rlhfkit.labelling.candidates import read_labels  # noqa: E402
from rlhfkit.labelling.records import Item, Submission  # noqa: E402
from rlhfkit.labelling.server import (  # noqa: E402
    CONTENT_SECURITY_POLICY,
    bind_socket,
    build_app,
    check_labeller,
    cookie_name,
    exposure_warning,
    page_url,
    ranks_from_groups,
    run_label_server,
    submission_from_payload,
)
from rlhfkit.labelling.store import LabelStore, shown_order  # noqa: E402

from .server_link import wait_for_link

PAGE_DIR = Path(__file__).resolve().parents[2] / "src" / "rlhfkit" / "labelling" / "page"


@dataclass
class Server:
    process: subprocess.Popen
    base: str
    """http://127.0.0.1:PORT"""
    token: str
    db: Path

    @property
    def link(self) -> str:
        return f"{self.base}/?token={self.token}"

    @property
    def cookie(self) -> str:
        return f"{cookie_name(self.token)}={self.token}"


def write_candidates(path: Path, items: list[Item]) -> Path:
    rows = [
        {"item_id": i.item_id, "prompt": i.prompt, "responses": list(i.responses)} for i in items
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def start_server(candidates: Path, db: Path, **settings) -> Server:
    """`run_label_server` in a subprocess on port 0; returns once it printed its link."""
    code = (
        "import json, sys\n"
        "from rlhfkit.labelling.server import run_label_server\n"
        "run_label_server(**json.loads(sys.argv[1]))\n"
    )
    arguments = {"candidates": str(candidates), "db": str(db), "port": 0, **settings}
    process = subprocess.Popen(
        [sys.executable, "-u", "-c", code, json.dumps(arguments)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    link = urlsplit(wait_for_link(process))
    token = parse_qs(link.query)["token"][0]
    return Server(process, f"{link.scheme}://{link.netloc}", token, Path(db))


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.kill()
    server.process.wait(timeout=30)
    server.process.stderr.close()


def http(method: str, url: str, body=None, cookie: str | None = None, content_type=None):
    """(status, headers, body text) of one request; no redirects followed, no error raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type or "application/json")
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def make_items(n: int, k: int = 3) -> list[Item]:
    return [
        Item(f"item-{i}", f"prompt {i}", tuple(f"r{i}.{j}" for j in range(k))) for i in range(n)
    ]


@pytest.fixture
def server(tmp_path):
    running = start_server(
        write_candidates(tmp_path / "candidates.jsonl", make_items(10)), tmp_path / "db"
    )
    yield running
    stop(running)


def next_state(server: Server, labeller: str = "ann") -> dict:
    status, _, body = http(
        "GET", f"{server.base}/api/next?labeller={labeller}", cookie=server.cookie
    )
    assert status == 200, body
    return json.loads(body)


def submit(server: Server, payload: dict) -> tuple[int, dict]:
    status, _, body = http("POST", f"{server.base}/api/submit", payload, cookie=server.cookie)
    return status, json.loads(body)


def test_the_printed_link_is_on_loopback_with_a_long_random_token(server, tmp_path):
    assert urlsplit(server.base).hostname == "127.0.0.1"
    assert len(server.token) >= 40
    other = start_server(tmp_path / "candidates.jsonl", tmp_path / "db")
    try:
        assert other.token != server.token
    finally:
        stop(other)


def every_route(tmp_path) -> list[tuple[str, str]]:
    """(method, path) of each API route of the app and of each static file of the page."""
    app = build_app(LabelStore(tmp_path / "routes.db"), token="unused")
    routes = [
        (method, route.path)
        for route in app.routes
        if hasattr(route, "methods")
        for method in sorted(route.methods - {"HEAD"})
    ]
    files = [("GET", f"/{path.name}") for path in sorted(PAGE_DIR.iterdir())]
    return routes + files + [("GET", "/"), ("GET", "/no-such-file"), ("POST", "/")]


def test_every_route_refuses_a_request_without_the_token(server, tmp_path):
    routes = every_route(tmp_path)
    assert {"/api/next", "/api/submit", "/api/undo", "/api/guidelines", "/app.js"} <= {
        path for _, path in routes
    }
    wrong_cookie = f"{cookie_name(server.token)}=not-the-token"
    for method, path in routes:
        body = {"labeller": "ann"} if method == "POST" else None
        for url, cookie in [
            (server.base + path, None),
            (server.base + path + "?token=wrong", None),
            (server.base + path, wrong_cookie),
        ]:
            status, _, text = http(method, url, body, cookie=cookie)
            assert status == 403, f"{method} {url} cookie={cookie}: {status}"
            assert "printed" in text
        # the same request with the token gets past the guard
        status, _, _ = http(method, server.base + path, body, cookie=server.cookie)
        assert status != 403, f"{method} {path}"
    assert json.loads(http("GET", server.base + "/api/guidelines", cookie=server.cookie)[2])


def test_the_token_in_the_link_sets_a_cookie_that_opens_the_rest(server):
    status, headers, page = http("GET", server.link)
    assert status == 200 and '<script src="/app.js"' in page
    cookie = headers["set-cookie"]
    assert cookie.startswith(server.cookie + ";")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    pair = cookie.split(";")[0]
    assert http("GET", server.base + "/app.js", cookie=pair)[0] == 200
    assert http("GET", server.base + "/style.css", cookie=pair)[0] == 200
    state = json.loads(http("GET", server.base + "/api/next?labeller=ann", cookie=pair)[2])
    assert state["item"]["item_id"] == "item-0"


def test_every_response_carries_the_content_security_policy(server):
    for url, cookie in [
        (server.link, None),
        (server.base + "/app.js", server.cookie),
        (server.base + "/api/next?labeller=ann", server.cookie),
        (server.base + "/api/next", None),  # refused
    ]:
        _, headers, _ = http("GET", url, cookie=cookie)
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


def test_the_state_shows_the_labellers_order_and_progress(server):
    state = next_state(server, "ann")
    order = shown_order(0, "ann", "item-0", 3)
    assert [r["index"] for r in state["item"]["responses"]] == list(order)
    assert [r["text"] for r in state["item"]["responses"]] == [f"r0.{i}" for i in order]
    assert state["progress"] == {"done": 0, "total": 10, "mine": 0, "mine_skipped": 0}
    assert state["can_undo"] is False
    assert next_state(server, "bob")["item"]["item_id"] != "item-0"  # ann holds item-0


def test_a_submission_over_http_is_stored_as_sent_and_undo_takes_it_back(server):
    item_id = next_state(server)["item"]["item_id"]
    payload = {
        "labeller": "ann",
        "item_id": item_id,
        "ranking": [[2], [0, 1]],
        "flags": {"1": "broken"},
        "comment": "<b>not markup</b>",
        "seconds": 4.5,
        # the page cannot choose the shown order: the server recomputes it
        "shown_order": [0, 1, 2],
    }
    status, state = submit(server, payload)
    assert status == 200
    assert state["item"]["item_id"] != item_id
    assert state["progress"]["mine"] == 1 and state["can_undo"]
    (stored,) = LabelStore(server.db).submissions()
    # the labels folder's submissions.jsonl, which `rlhfkit label export` reads, is current
    assert read_labels(server.db.parent)[1] == [stored]
    assert stored.ranks == (1, 1, 0)
    assert stored.shown_order == shown_order(0, "ann", item_id, 3)
    assert (stored.flags, stored.comment, stored.seconds) == (
        {1: "broken"},
        payload["comment"],
        4.5,
    )
    assert stored.submitted_at.endswith("Z")

    status, _, body = http("POST", server.base + "/api/undo", {"labeller": "ann"}, server.cookie)
    assert status == 200
    assert json.loads(body)["item"]["item_id"] == item_id
    assert LabelStore(server.db).submissions() == []
    assert read_labels(server.db.parent)[1] == []


LEFT_OUT = object()


@pytest.mark.parametrize(
    "change",
    [
        {"ranking": [[0], [1]]},  # a response left out
        {"ranking": [[0, 1], [1, 2]]},  # one placed twice
        {"ranking": [[0], [], [1, 2]]},
        {"ranking": [[0], [1], [True]]},
        {"flags": {"0": "boring"}},
        {"flags": {"9": "unsafe"}},
        {"flags": {"²": "unsafe"}},  # "²".isdigit() is true, yet int("²") fails
        {"seconds": -1},
        {"seconds": 10**400},  # too large for a float
        {"comment": "x" * 5001},
        {"labeller": "  "},
        {"labeller": "ann,bob"},  # would read as two labellers in a merged export
        {"labeller": "a:b"},
        {"item_id": "no-such-item"},
        {"ranking": [[0, 1, 2]]},  # every response tied: it prefers none
        {"comment": "half a pair \ud800"},  # sent as JSON's escape: no text the store keeps
        {"item_id": "\udc00"},
        {"ranking": LEFT_OUT, "rankings": [[0], [1], [2]]},  # a typo is no skip
        {"flags": 0},
        {"flags": False},
        {"comment": []},
    ],
)
def test_a_bad_submission_is_refused_and_nothing_is_stored(server, change):
    item_id = next_state(server)["item"]["item_id"]
    payload = {"labeller": "ann", "item_id": item_id, "ranking": [[0], [1], [2]], **change}
    payload = {key: value for key, value in payload.items() if value is not LEFT_OUT}
    status, answer = submit(server, payload)
    assert status == 400 and answer["error"]
    assert LabelStore(server.db).submissions() == []


def test_a_second_answer_and_a_body_that_is_not_json_are_refused(server):
    item_id = next_state(server)["item"]["item_id"]
    payload = {"labeller": "ann", "item_id": item_id, "ranking": None}
    assert submit(server, payload)[0] == 200
    status, answer = submit(server, payload)
    assert status == 400 and "already answered" in answer["error"]
    status, _, _ = http(
        "POST", server.base + "/api/submit", payload, server.cookie, content_type="text/plain"
    )
    assert status == 400
    assert len(LabelStore(server.db).submissions()) == 1


def test_an_item_held_for_another_labeller_is_not_taken_from_them(server):
    item_id = next_state(server)["item"]["item_id"]  # on ann's screen
    status, answer = submit(server, {"labeller": "bob", "item_id": item_id, "ranking": None})
    assert status == 400 and answer["error"] == f"item {item_id!r} was not served to 'bob'"
    assert LabelStore(server.db).submissions() == []
    assert submit(server, {"labeller": "ann", "item_id": item_id, "ranking": None})[0] == 200


def test_a_body_nested_too_deeply_is_refused_as_a_bad_request(server):
    body = b"[" * 100_000 + b"]" * 100_000
    request = urllib.request.Request(f"{server.base}/api/submit", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Cookie", server.cookie)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    assert "nested too deeply" in json.loads(caught.value.read().decode())["error"]


def test_kill_9_loses_no_acknowledged_submission_and_the_labeller_resumes(tmp_path):
    candidates = write_candidates(tmp_path / "candidates.jsonl", make_items(10))
    server = start_server(candidates, tmp_path / "db")
    sent = []
    try:
        for n in range(6):
            item_id = next_state(server)["item"]["item_id"]
            ranking = None if n == 3 else [[n % 3], [(n + 1) % 3, (n + 2) % 3]]
            status, _ = submit(
                server,
                {"labeller": "ann", "item_id": item_id, "ranking": ranking, "comment": f"#{n}"},
            )
            assert status == 200
            sent.append((item_id, ranking, f"#{n}"))
        on_screen = next_state(server)["item"]["item_id"]
    finally:
        os.kill(server.process.pid, signal.SIGKILL)
        stop(server)
    assert server.process.returncode == -signal.SIGKILL

    stored = LabelStore(tmp_path / "db").submissions()
    assert [(s.item_id, s.comment) for s in stored] == [(i, c) for i, _, c in sent]
    for submission, (_, ranking, _) in zip(stored, sent):
        expected = None if ranking is None else ranks_from_groups(ranking, 3)
        assert submission.ranks == expected

    restarted = start_server(candidates, tmp_path / "db")
    try:
        assert restarted.token != server.token
        state = next_state(restarted)
        assert state["item"]["item_id"] == on_screen
        assert state["progress"]["mine"] == 6
    finally:
        stop(restarted)


def test_a_new_store_never_overwrites_a_submissions_file_it_did_not_write(tmp_path):
    candidates = write_candidates(tmp_path / "candidates.jsonl", make_items(2))
    imported = '{"item_id": "item-0", "labeller": "x", "ranks": [0, 1, 2]}\n'
    (tmp_path / "submissions.jsonl").write_text(imported)
    with pytest.raises(AssertionError, match="submissions.jsonl exists and the store"):
        start_server(candidates, tmp_path / "db")
    assert (tmp_path / "submissions.jsonl").read_text() == imported


def test_only_the_listed_labellers_are_accepted_when_a_list_is_given():
    listed = SimpleNamespace(labellers=("ann", "bob"))
    assert check_labeller(" ann ", listed) == "ann"
    with pytest.raises(RlhfkitError, match="unknown labeller 'eve'"):
        check_labeller("eve", listed)
    anyone = SimpleNamespace(labellers=())
    assert check_labeller("eve", anyone) == "eve"
    for bad in ("", "   ", None, "x" * 65, "tab\there"):
        with pytest.raises(RlhfkitError):
            check_labeller(bad, anyone)


def test_ranking_groups_become_ranks_with_ties_and_the_shown_order_is_the_servers():
    assert ranks_from_groups([[2], [0, 3], [1]], 4) == (1, 2, 0, 1)
    assert ranks_from_groups([[0, 1], [2]], 3) == (0, 0, 1)
    with pytest.raises(RlhfkitError, match="ties every response prefers none"):
        ranks_from_groups([[0, 1, 2]], 3)  # it would count as done, and export nothing
    item = Item("x", "p", ("a", "b", "c"))
    payload = {"ranking": [[1], [0], [2]], "flags": {"2": "unsafe"}, "shown_order": [2, 1, 0]}
    submission = submission_from_payload(payload, item, "ann", seed=5)
    assert submission.ranks == (1, 0, 2)
    assert submission.shown_order == shown_order(5, "ann", "x", 3)
    assert submission.flags == {2: "unsafe"}
    assert submission_from_payload({"ranking": None}, item, "ann", seed=5).skipped


def test_serving_beyond_loopback_warns_and_the_link_names_a_reachable_address():
    assert exposure_warning("127.0.0.1") is None
    assert exposure_warning("::1") is None
    assert exposure_warning("localhost") is None
    assert "not only on this machine" in exposure_warning("0.0.0.0")
    assert "token" in exposure_warning("192.168.1.20")
    assert page_url("0.0.0.0", 8765, "T") == "http://127.0.0.1:8765/?token=T"
    assert page_url("::1", 80, "T") == "http://[::1]:80/?token=T"


@pytest.mark.parametrize("port", [70000, -1])
def test_a_port_out_of_range_is_a_one_line_error(port):
    with pytest.raises(RlhfkitError, match=f"cannot listen on 127.0.0.1:{port}: a port is 0 to"):
        bind_socket("127.0.0.1", port)


def test_a_new_batch_served_with_a_store_of_earlier_labels_keeps_them_exportable(tmp_path):
    earlier = make_items(2)
    store = LabelStore(tmp_path / "labels.db")
    store.add_items(earlier)
    store.submit(Submission("item-0", "ann", (0, 1, 2), (0, 1, 2)))
    batch = [Item(f"new-{i}", f"new prompt {i}", ("a", "b")) for i in range(3)]
    candidates = write_candidates(tmp_path / "candidates.jsonl", batch)

    stop(start_server(candidates, tmp_path / "labels.db"))

    # submissions.jsonl holds the store's labels, so candidates.jsonl lists the store's items
    items, submissions = read_labels(tmp_path)
    assert [item.item_id for item in items] == ["item-0", "item-1", "new-0", "new-1", "new-2"]
    assert submissions == store.submissions()


def test_a_port_in_use_is_a_one_line_error():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(RlhfkitError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind_socket("127.0.0.1", port)


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    """A declared length over the limit is refused at once, and a chunked body (no length) as
    soon as it passes the limit: neither is held in memory whole."""
    host, port = urlsplit(server.base).hostname, urlsplit(server.base).port
    for headers, body in (
        (f"Content-Length: {50 * 1024**3}\r\n", b"{}"),  # 50 GiB announced, 2 bytes sent
        ("Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (2**21, b"x" * 2**21)),
    ):
        with socket.create_connection((host, port), timeout=30) as connection:
            connection.sendall(
                (
                    f"POST /api/submit HTTP/1.1\r\nHost: {host}\r\nCookie: {server.cookie}\r\n"
                    f"Content-Type: application/json\r\n{headers}\r\n"
                ).encode()
                + body
            )
            answer = b""
            while b'"}' not in answer:  # the head and the JSON error may come apart
                chunk = connection.recv(65536)
                if not chunk:
                    break
                answer += chunk
            answer = answer.decode(errors="replace")
        assert answer.startswith("HTTP/1.1 400"), answer
        assert "a request body is at most 1048576 bytes" in answer
    assert LabelStore(server.db).submissions() == []


def test_a_labeller_with_nothing_open_is_told_how_many_prompts_others_hold(tmp_path):
    server = start_server(
        write_candidates(tmp_path / "candidates.jsonl", make_items(1)),
        tmp_path / "db",
        overlap=0.0,
        hold_minutes=0.02,  # 1.2 s
    )
    try:
        assert next_state(server, "ann")["item"]["item_id"] == "item-0"
        waiting = next_state(server, "bob")
        assert waiting["item"] is None and waiting["waiting"] == 1
        assert waiting["ask_again_seconds"] == pytest.approx(0.3)
        time.sleep(1.5)  # ann left it past the hold: it goes to bob too
        state = next_state(server, "bob")
        assert state["item"]["item_id"] == "item-0" and state["waiting"] == 0
    finally:
        stop(server)


def test_the_hold_must_be_a_positive_time(tmp_path):
    with pytest.raises(RlhfkitError, match="--hold-minutes must be above 0, got 0"):
        run_label_server(
            write_candidates(tmp_path / "c.jsonl", make_items(1)), tmp_path / "db", hold_minutes=0
        )


def test_overlap_items_that_the_named_labellers_cannot_finish_are_refused(tmp_path):
    candidates = write_candidates(tmp_path / "c.jsonl", make_items(1))
    with pytest.raises(RlhfkitError, match="overlap items want 3 labellers, but --labellers"):
        run_label_server(candidates, tmp_path / "db", overlap_labellers=3, labellers=("a", "b"))
    assert not (tmp_path / "db").exists()  # refused before the store kept those settings
    LabelStore(tmp_path / "db", overlap_labellers=3)  # a store made earlier, without names
    with pytest.raises(RlhfkitError, match="want 3 labellers"):
        run_label_server(candidates, tmp_path / "db", labellers=("a", "b"))
