"""`rlhfkit label serve`: the page where people rank candidate responses, and its JSON API.

Starlette answers the requests and uvicorn serves them (the optional extra `label`;
nothing outside this module imports either). Every request, the static files included, must carry
the access token printed with the page's address: in the query string (the link) or in the cookie
that a response to such a request sets. Anything else gets 403. Every response carries a strict
Content-Security-Policy: the page runs only its own script file, and shows prompts and responses
as text, so markup inside a response is never run.

Routes (the API speaks JSON; `labeller` names the person):
    GET  /                        the page (static files from `page/`)
    GET  /api/guidelines          {"text": ...}
    GET  /api/next?labeller=NAME  the labeller's state: progress and the item to rank
    POST /api/submit              {labeller, item_id, ranking | null (skip), flags, comment,
                                  seconds} -> committed, then the next state
    POST /api/undo                {labeller} -> their last submission removed, its item again
"""

import hashlib
import ipaddress
import json
import secrets
import socket
import sys
import threading
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rlhfkit.errors import RlhfkitError
from rlhfkit.labelling.candidates import SUBMISSIONS_FILE, read_items
from rlhfkit.labelling.records import FLAGS, Item, Submission, flag_index, seconds_value, show_value
from rlhfkit.labelling.store import (
    DEFAULTS,
    HOLD_SECONDS,
    LabelStore,
    shown_order,
    write_candidates_file,
    write_submissions_file,
)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # answers change with every submission, and the page must never be read from a cache
    (b"cache-control", b"no-store"),
)
MAX_BODY_BYTES = 1024 * 1024
MAX_COMMENT_CHARS = 5000
MAX_NAME_CHARS = 64
MAX_PORT = 65535


def run_label_server(
    candidates: str | Path,
    db: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    guidelines: str | Path | None = None,
    overlap: float | None = None,
    overlap_labellers: int | None = None,
    seed: int | None = None,
    labellers: tuple[str, ...] = (),
    hold_minutes: float = HOLD_SECONDS / 60,
) -> None:
    """Load `candidates` into the store at `db` and serve the labelling page until interrupted.

    Args:
        candidates: a `candidates.jsonl` written by `rlhfkit sample`; items already in the
            store are kept, new ones added. Its folder is the labels folder: every submit and
            undo rewrites its `submissions.jsonl` from the store, for `rlhfkit label export`,
            and the file itself gets back the store's items it lacks (`sync_labels_folder`).
        db: the SQLite store (created if missing); restarting on it resumes every labeller.
        host, port: where to listen; 127.0.0.1 unless another address is asked for (then a
            warning is printed). Port 0 takes a free port; the printed address names it.
        guidelines: a text file shown on the page (as text).
        overlap, overlap_labellers, seed: the store's assignment settings (see `LabelStore`);
            None keeps an existing store's.
        labellers: if given, the only names accepted.
        hold_minutes: how long an item stays with the labeller who opened it before it may go to
            another too (`LabelStore.hold_seconds`).
    """
    text = _read_guidelines(guidelines)
    items = read_items(candidates)
    if not items:
        raise RlhfkitError(f"{candidates}: no items to label")
    submissions_file = _submissions_file(candidates, db)
    if not hold_minutes > 0:
        raise RlhfkitError(f"--hold-minutes must be above 0, got {hold_minutes}")
    asked = {"overlap": overlap, "overlap_labellers": overlap_labellers}
    check_enough_labellers(
        {k: DEFAULTS[k] if v is None else v for k, v in asked.items()}, labellers
    )
    store = LabelStore(
        db,
        overlap=overlap,
        overlap_labellers=overlap_labellers,
        seed=seed,
        hold_seconds=hold_minutes * 60,
    )
    check_enough_labellers(store.settings, labellers)  # a store made before keeps its own
    added = store.add_items(items)
    earlier = sync_labels_folder(store, Path(candidates), len(items), submissions_file)
    token = secrets.token_urlsafe(32)
    app = build_app(store, token, text, labellers, submissions_file)
    sock = bind_socket(host, port)
    warning = exposure_warning(host)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{added} new items, {len(store.items())} in {db}; submissions kept in {submissions_file}"
    )
    if earlier:
        print(f"{candidates}: the store's {earlier} earlier items added, so their labels export")
    print(f"labelling page: {page_url(host, sock.getsockname()[1], token)}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def check_enough_labellers(settings: dict, labellers: tuple[str, ...]) -> None:
    """Refuse overlap items that want more rankings than the allowed names can give: they
    could never be done."""
    wanted = settings["overlap_labellers"]
    if labellers and settings["overlap"] > 0 and wanted > len(labellers):
        raise RlhfkitError(
            f"overlap items want {wanted} labellers, but --labellers names {len(labellers)}: "
            "name more labellers, or use a store with fewer (--overlap-labellers) or none "
            "(--overlap 0)"
        )


def build_app(
    store: LabelStore,
    token: str,
    guidelines: str = "",
    labellers: tuple[str, ...] = (),
    submissions_file: Path | None = None,
) -> Starlette:
    """The web app: the API routes, the page's static files, and the token guard around all.
    With `submissions_file`, every submit and undo rewrites it from the store."""
    routes = [
        Route("/api/guidelines", api_guidelines, methods=["GET"]),
        Route("/api/next", api_next, methods=["GET"]),
        Route("/api/submit", api_submit, methods=["POST"]),
        Route("/api/undo", api_undo, methods=["POST"]),
        Mount("/", StaticFiles(packages=[("rlhfkit.labelling", "page")], html=True)),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(TokenGuard, token=token)])
    app.state.store = store
    app.state.guidelines = guidelines
    app.state.labellers = tuple(name.strip() for name in labellers)
    app.state.submissions_file = submissions_file
    # rewrites run one at a time, so the last one written holds the latest submissions
    app.state.submissions_lock = threading.Lock()
    return app


class TokenGuard:
    """ASGI middleware: 403 for any request without the token, the security headers on every
    response, and the token cookie on responses to a request that brought it in its query."""

    def __init__(self, app, token: str):
        self.app, self.token, self.cookie = app, token, cookie_name(token)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websocket routes: refuse rather than pass through
            return await send({"type": "websocket.close", "code": 1008})
        connection = HTTPConnection(scope)
        from_query = self._is_token(connection.query_params.get("token"))
        granted = from_query or self._is_token(connection.cookies.get(self.cookie))
        extra = list(SECURITY_HEADERS)
        if from_query:
            cookie = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            extra.append((b"set-cookie", cookie.encode()))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if not granted:
            refusal = PlainTextResponse(
                "403 Forbidden: open the page with the link (and its token) that the server "
                "printed (`rlhfkit label serve`, or a training run's 'labelling page:' line); a "
                "server started again prints a new link",
                status_code=403,
            )
            return await refusal(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)

    def _is_token(self, value: str | None) -> bool:
        return value is not None and secrets.compare_digest(value.encode(), self.token.encode())


def cookie_name(token: str) -> str:
    """Cookies ignore ports: naming the cookie after the token keeps two servers on one machine
    from overwriting each other's."""
    return "rlhfkit_label_" + hashlib.sha256(token.encode()).hexdigest()[:12]


async def api_guidelines(request: Request) -> JSONResponse:
    return JSONResponse({"text": request.app.state.guidelines})


async def api_next(request: Request) -> JSONResponse:
    try:
        labeller = check_labeller(request.query_params.get("labeller"), request.app.state)
        state = await run_in_threadpool(labeller_state, request.app.state.store, labeller)
    except RlhfkitError as error:
        return _error(error)
    return JSONResponse(state)


async def api_submit(request: Request) -> JSONResponse:
    store: LabelStore = request.app.state.store
    try:
        payload = await _json_body(request)
        labeller = check_labeller(payload.get("labeller"), request.app.state)
        item = await run_in_threadpool(store.item, str(payload.get("item_id")))
        if item is None:
            raise RlhfkitError(f"no item {payload.get('item_id')!r}")
        if not await run_in_threadpool(store.was_served, labeller, item.item_id):
            # the page answers what it was served; another client would get around the holds
            raise RlhfkitError(f"item {item.item_id!r} was not served to {labeller!r}")
        submission = submission_from_payload(payload, item, labeller, store.seed)
        # committed to disk before the answer goes out: an acknowledged submission is kept
        await run_in_threadpool(store.submit, submission)
        await run_in_threadpool(_refresh_submissions_file, request.app.state)
        state = await run_in_threadpool(labeller_state, store, labeller)
    except RlhfkitError as error:
        return _error(error)
    return JSONResponse(state)


async def api_undo(request: Request) -> JSONResponse:
    store: LabelStore = request.app.state.store
    try:
        payload = await _json_body(request)
        labeller = check_labeller(payload.get("labeller"), request.app.state)
        await run_in_threadpool(store.undo_last, labeller)
        await run_in_threadpool(_refresh_submissions_file, request.app.state)
        state = await run_in_threadpool(labeller_state, store, labeller)
    except RlhfkitError as error:
        return _error(error)
    return JSONResponse(state)


def labeller_state(store: LabelStore, labeller: str) -> dict:
    """What the page shows a labeller: progress, and the item with its responses in this
    labeller's order (null when nothing is open to them; then `waiting` counts the items on
    others' screens that may still come to them, and the page asks again)."""
    item = store.next_item(labeller)
    progress = store.progress(labeller)
    view = None
    if item is not None:
        order = shown_order(store.seed, labeller, item.item_id, len(item.responses))
        view = {
            "item_id": item.item_id,
            "prompt": item.prompt,
            "responses": [{"index": i, "text": item.responses[i]} for i in order],
        }
    return {
        "labeller": labeller,
        "progress": asdict(progress),
        "item": view,
        "waiting": store.waiting(labeller) if item is None else 0,
        # how soon a waiting page asks again: well within the hold, at most every 30 s
        "ask_again_seconds": min(30.0, store.hold_seconds / 4),
        "can_undo": progress.mine > 0,
    }


def check_labeller(name, state) -> str:
    """A labeller's name as given on the page: trimmed, 1-64 printable characters with no comma
    or colon, and one of the allowed names when the server was given a list."""
    if not isinstance(name, str) or not name.strip():
        raise RlhfkitError("give your name to start labelling")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise RlhfkitError(f"a name is at most {MAX_NAME_CHARS} printable characters")
    if "," in name or ":" in name:  # they separate names in exports (`ann,bob`, `item:ann`)
        raise RlhfkitError("a name has no comma or colon")
    if state.labellers and name not in state.labellers:
        raise RlhfkitError(f"unknown labeller {name!r}: expected one of {list(state.labellers)}")
    return name


def submission_from_payload(payload: dict, item: Item, labeller: str, seed: int) -> Submission:
    """The page's answer as a Submission. The shown order is recomputed here, never taken from
    the page; `ranking` lists groups of response indices best first (a group is a tie), or is
    null for a skip."""
    k = len(item.responses)
    if "ranking" not in payload:  # a typo must not be stored as a skip
        raise RlhfkitError("no ranking: send the groups of response indices, or null to skip")
    ranking = payload["ranking"]
    flags = payload.get("flags", {})
    comment = payload.get("comment", "")
    seconds = seconds_value(payload.get("seconds", 0))
    if not isinstance(flags, dict) or any(flag not in FLAGS for flag in flags.values()):
        raise RlhfkitError(f"flags map a response index to one of {FLAGS}")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS:
        raise RlhfkitError(f"a comment is text of at most {MAX_COMMENT_CHARS} characters")
    if seconds is None:
        raise RlhfkitError("seconds must be a number of seconds >= 0")
    return Submission(
        item_id=item.item_id,
        labeller=labeller,
        ranks=None if ranking is None else ranks_from_groups(ranking, k),
        shown_order=shown_order(seed, labeller, item.item_id, k),
        flags={_response_index(index, k): flag for index, flag in flags.items()},
        comment=comment,
        seconds=seconds,
        submitted_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def ranks_from_groups(groups, k: int) -> tuple[int, ...]:
    """[[2], [0, 3], [1]] (best first, a group is a tie) -> ranks (1, 2, 0, 1) per response."""
    problem = RlhfkitError(f"ranking must place each of the {k} responses exactly once")
    if not isinstance(groups, list):
        raise problem
    ranks: list[int | None] = [None] * k
    for rank, group in enumerate(groups):
        if not isinstance(group, list) or not group:
            raise problem
        for index in group:
            if not _is_index(index, k) or ranks[index] is not None:
                raise problem
            ranks[index] = rank
    if None in ranks:
        raise problem
    if len(groups) == 1 and k > 1:  # kept, it would count as done and export no pair
        raise RlhfkitError(
            "a ranking that ties every response prefers none, and trains nothing: rank at "
            "least two apart, or skip the item"
        )
    return tuple(ranks)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the address is printed, so the printed port (a free
    one for port 0) is already taken by this server."""
    if not 0 <= port <= MAX_PORT:  # bind() raises OverflowError past it, not OSError
        raise RlhfkitError(f"cannot listen on {host}:{port}: a port is 0 to {MAX_PORT}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except (OSError, ValueError) as error:  # ValueError: a host name idna cannot encode
        raise RlhfkitError(f"cannot listen on {host}:{port}: {error}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str) -> str | None:
    """The warning printed when the page is served beyond this machine."""
    if is_loopback(host):
        return None
    return (
        f"serving on {host}, not only on this machine: anyone who can reach it and has the "
        "link can label, and plain HTTP lets the network read the link's token"
    )


def page_url(host: str, port: int, token: str) -> str:
    """The link to print. A wildcard address is not one to open: show loopback instead."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


def sync_labels_folder(
    store: LabelStore, candidates: Path, listed: int, submissions_file: Path
) -> int:
    """Keep the labels folder what the store holds. `submissions_file` gets every submission,
    so `candidates` (which lists `listed` items, all now in the store) must list every item:
    those of an earlier candidates file served with this store too, or export and stats fail on
    "no such item". It is rewritten only then; returns how many items it got back."""
    earlier = len(store.items()) - listed
    if earlier:
        write_candidates_file(store, candidates)
    write_submissions_file(store, submissions_file)  # current again after a crash
    return earlier


def _submissions_file(candidates: str | Path, db: str | Path) -> Path:
    """The labels folder's submissions.jsonl, beside the candidates. One this store did not
    write (an import, another store) is never overwritten: a new store refuses to start."""
    path = Path(candidates).parent / SUBMISSIONS_FILE
    if path.exists() and not Path(db).exists():
        raise RlhfkitError(
            f"{path} exists and the store {db} is new: move that file away, or serve the "
            "store that wrote it"
        )
    return path


def _refresh_submissions_file(state) -> None:
    if state.submissions_file is None:
        return
    with state.submissions_lock:
        try:
            write_submissions_file(state.store, state.submissions_file)
        except OSError as error:
            # the store has the submission; the file catches up at the next write or restart
            print(f"warning: could not update {state.submissions_file}: {error}", file=sys.stderr)


def _read_guidelines(path: str | Path | None) -> str:
    if path is None:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RlhfkitError(f"cannot read the guidelines {path}: {error}") from None


async def _json_body(request: Request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise RlhfkitError("send JSON (Content-Type: application/json)")
    too_large = RlhfkitError(f"a request body is at most {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large  # refused before reading: a huge body never reaches memory
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked bodies have no length: count as they come
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RlhfkitError("the request body is not JSON") from None
    except RecursionError:
        raise RlhfkitError("the request body is JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise RlhfkitError("the request body must be a JSON object")
    try:  # an escaped half of a surrogate pair ("\\ud800") is no text the store can keep
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RlhfkitError("the request body holds text that is not valid Unicode") from None
    return payload


def _error(error: RlhfkitError) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=400)


def _is_index(value, k: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < k


def _response_index(key, k: int) -> int:
    """A flag's key: a response index, as JSON object keys come (strings of digits)."""
    index = flag_index(key)
    if index is not None and _is_index(index, k):
        return index
    raise RlhfkitError(f"flags name a response by its index 0..{k - 1}, got {show_value(key)}")
