"""People in the online loop: a labeller that puts each refresh's samples in the label store,
where the labelling page shows them, and waits until people have answered every one.

Each refresh's prompts become items `<run>/r<refresh>/p<prompt>` with their K responses. The
labeller polls the store until every item has an answer, then reads, per item, the first ranking
submitted (ties are equal ranks, made dense) or, when the item was only skipped, no preference:
the trainer drops it. Answers are committed to the store as they are given, so a run that stops
(timeout, crash, Ctrl-C) loses none: resumed, it asks for the same items under the same ids and
finds the answers already there.

The store's folder is kept a labels folder (`candidates.jsonl` and `submissions.jsonl` rewritten
from the store), so `rlhfkit label export`, `label stats` and `label serve` read the run's labels.
With `serve`, the page runs in a thread of this process on 127.0.0.1; its link is printed.
"""

import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.labelling.candidates import CANDIDATES_FILE, SUBMISSIONS_FILE
from rlhfkit.labelling.export import dense_ranks
from rlhfkit.labelling.records import Item, Submission
from rlhfkit.labelling.store import (
    HOLD_SECONDS,
    LabelStore,
    write_candidates_file,
    write_submissions_file,
)
from rlhfkit.objectives.ranking import ranking_comparisons

Ranks = tuple[int, ...]
"""Per response, in sampling order: 0 = best, equal = a tie."""


@dataclass(frozen=True)
class HumanSettings:
    """Where people's answers are kept and how long a refresh waits for them."""

    store: Path
    """The SQLite label store (created if missing); its folder becomes a labels folder."""
    run_tag: str
    """Names this run's items in the store: `<run_tag>/r0003/p0012`."""
    timeout_s: float
    """Seconds a refresh waits for its answers; 0 = no limit."""
    serve: bool
    """Serve the labelling page from this process (127.0.0.1 only)."""
    port: int
    """The page's port; 0 = a free one."""
    poll_s: float = 1.0
    """Seconds between two looks at the store."""
    hold_s: float = HOLD_SECONDS
    """How long a prompt on someone's screen stays theirs alone (`LabelStore.hold_seconds`)."""


def refresh_items(
    run_tag: str, refresh: int, prompts: list[PromptExample], responses: list[list[str]]
) -> list[Item]:
    """One item per prompt, its id unique to the run, the refresh and the prompt's position."""
    return [
        Item(
            f"{run_tag}/r{refresh:04d}/p{index:04d}",
            prompt.prompt,
            tuple(group),
            {"run": run_tag, "refresh": refresh},
        )
        for index, (prompt, group) in enumerate(zip(prompts, responses))
    ]


def first_answers(
    submissions: list[Submission], item_ids: list[str]
) -> tuple[dict[str, Ranks], set[str]]:
    """(ranked, skipped) among `item_ids`: each item's first ranking in submission order, dense;
    and the items that have only skips so far. A ranking that ties every response prefers
    nothing: it counts as a skip, as the export leaves it out."""
    wanted = set(item_ids)
    ranked: dict[str, Ranks] = {}
    skipped: set[str] = set()
    for submission in submissions:
        if submission.item_id not in wanted or submission.item_id in ranked:
            continue
        if submission.skipped or len(set(submission.ranks)) < 2:
            skipped.add(submission.item_id)
        else:
            ranked[submission.item_id] = dense_ranks(submission.ranks)
    return ranked, skipped - ranked.keys()


def order_of(ranks: Ranks) -> list[int]:
    """Response indices best first; tied responses keep their sampling order."""
    return sorted(range(len(ranks)), key=lambda i: (ranks[i], i))


class HumanLabeller:
    """Ranks by asking people through the label store (see the module docstring).

    Args:
        store: the label store the page serves.
        run_tag, timeout_s, poll_s: see `HumanSettings`.
        page: the page's link, shown in the progress lines (None: not known here).
        stop_page: stops a page this labeller started (`close`).
        log: where progress lines go.
    """

    name = "human"

    def __init__(
        self,
        store: LabelStore,
        *,
        run_tag: str,
        timeout_s: float,
        poll_s: float = 1.0,
        page: str | None = None,
        stop_page: Callable[[], None] | None = None,
        log=sys.stderr,
    ):
        self.store, self.run_tag, self.timeout_s, self.poll_s = store, run_tag, timeout_s, poll_s
        self.page, self.stop_page, self.log = page, stop_page, log
        self.labels_used = 0
        self.refreshes = 0

    def rank_with_ties(
        self, prompts: list[PromptExample], responses: list[list[str]]
    ) -> list[Ranks | None]:
        """Queue the prompts' responses, wait for people, and return each prompt's ranks (None:
        skipped, no preference). Every prompt costs C(K,2) labels, skipped or not."""
        items = refresh_items(self.run_tag, self.refreshes, prompts, responses)
        self._queue(items)
        ranked = self._wait([item.item_id for item in items])
        # the skipped prompts are dropped: stop serving them, or they come before the next
        # refresh's prompts (file order) and people rank what no run will use
        self.store.retire_unranked(item.item_id for item in items if item.item_id not in ranked)
        self.refreshes += 1
        self.labels_used += sum(ranking_comparisons(len(group)) for group in responses)
        return [ranked.get(item.item_id) for item in items]

    def rank(self, prompts: list[PromptExample], responses: list[list[str]]) -> list[list[int]]:
        """The `Labeller` interface: indices best first, ties in sampling order. An order cannot
        say "no preference", so a skipped prompt is refused here; `rank_with_ties` keeps both."""
        orders = []
        for index, ranks in enumerate(self.rank_with_ties(prompts, responses)):
            if ranks is None:
                raise RlhfkitError(
                    f"prompt {index} was skipped: this trainer needs every prompt ranked"
                )
            orders.append(order_of(ranks))
        return orders

    def state_dict(self) -> dict:
        return {"labels_used": self.labels_used, "refreshes": self.refreshes}

    def load_state_dict(self, state: dict) -> None:
        self.labels_used, self.refreshes = state["labels_used"], state["refreshes"]

    def close(self) -> None:
        """Stop the page, if this labeller started one."""
        if self.stop_page is not None:
            self.stop_page()
            self.stop_page = None

    def _queue(self, items: list[Item]) -> None:
        """Add the refresh's items; ones already stored (a resumed run) must hold the same
        responses, else their answers belong to other samples."""
        for item in items:
            stored = self.store.item(item.item_id)
            if stored is not None and (stored.prompt, stored.responses) != (
                item.prompt,
                item.responses,
            ):
                raise RlhfkitError(
                    f"{self.store.path}: item {item.item_id} holds other responses than this run "
                    "sampled: resume from the checkpoint taken before that refresh, or start "
                    "with a new human_store"
                )
        self.store.add_items(items)
        write_candidates_file(self.store, self.store.path.parent / CANDIDATES_FILE)

    def _wait(self, item_ids: list[str]) -> dict[str, Ranks]:
        """Poll the store until every item is answered (ranked or skipped), printing a line
        each time the count changes; the rankings by item id."""
        start, shown = time.monotonic(), -1
        while True:
            ranked, skipped = first_answers(self.store.submissions(), item_ids)
            answered = len(ranked) + len(skipped)
            if answered == len(item_ids):
                if shown != -1 and answered != shown:  # the last change, as every other
                    print(self._progress(answered, len(skipped), len(item_ids)), file=self.log)
                write_submissions_file(self.store, self.store.path.parent / SUBMISSIONS_FILE)
                return ranked
            if answered != shown:
                print(self._progress(answered, len(skipped), len(item_ids)), file=self.log)
                shown = answered
            if self.timeout_s and time.monotonic() - start >= self.timeout_s:
                raise RlhfkitError(
                    f"labeller=human: {answered} of {len(item_ids)} prompts of refresh "
                    f"{self.refreshes} answered within human_timeout_s={self.timeout_s:g}; "
                    f"{self.store.path} keeps every answer: rank the rest and rerun with "
                    "--resume (it asks only for what is missing)"
                )
            time.sleep(self.poll_s)

    def _progress(self, answered: int, skipped: int, total: int) -> str:
        where = f"rank them at {self.page}" if self.page else f"store {self.store.path}"
        return (
            f"labeller=human: refresh {self.refreshes}: {answered} of {total} prompts answered "
            f"({skipped} skipped); {where}"
        )


def serve_page(store: LabelStore, port: int) -> tuple[str, Callable[[], None]]:
    """Serve the labelling page for `store` on 127.0.0.1 in a background thread; returns its
    link (with a new access token) and a function that stops it."""
    try:
        import uvicorn

        from rlhfkit.labelling.server import bind_socket, build_app, page_url
    except ModuleNotFoundError as error:
        if error.name not in ("starlette", "uvicorn"):
            raise
        raise RlhfkitError(
            f"human_serve=true needs {error.name}: pip install -e '.[label]' in the rlhfkit "
            "checkout, or set human_serve=false and serve the store another way"
        ) from None
    token = secrets.token_urlsafe(32)
    app = build_app(store, token, submissions_file=store.path.parent / SUBMISSIONS_FILE)
    sock = bind_socket("127.0.0.1", port)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    # a daemon thread: a run that ends by an error still exits; uvicorn leaves signals to the
    # main thread when it runs in another one
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return page_url("127.0.0.1", sock.getsockname()[1], token), stop


def open_human_labeller(settings: HumanSettings, log=sys.stderr) -> HumanLabeller:
    """The store (a new one asks one ranking per item: the run waits for one), the labels
    folder around it, and the page when `settings.serve`."""
    path = Path(settings.store)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = LabelStore(path, overlap=None if path.exists() else 0.0, hold_seconds=settings.hold_s)
    page, stop = serve_page(store, settings.port) if settings.serve else (None, None)
    if page is not None:
        print(f"labelling page: {page}", file=log, flush=True)
    return HumanLabeller(
        store,
        run_tag=settings.run_tag,
        timeout_s=settings.timeout_s,
        poll_s=settings.poll_s,
        page=page,
        stop_page=stop,
        log=log,
    )
