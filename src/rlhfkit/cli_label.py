"""`rlhfkit label`: human labels in a browser, their export for training, statistics, import.

Part of the command line (cli.py registers it): parse, call, print. Heavy imports happen when a
command runs, so `rlhfkit --help` stays fast.
"""

import json
import os
import sys
from pathlib import Path

from rlhfkit.errors import RlhfkitError


def add_label_parser(sub) -> None:
    label = sub.add_parser(
        "label", help="human labels: label in a browser, export for training, statistics, import"
    )
    actions = label.add_subparsers(dest="action", required=True)
    export = actions.add_parser(
        "export", help="rankings or TRL pairs as JSON lines (rm, dpo), or the flagged responses"
    )
    export.add_argument("labels", help="labels folder (candidates.jsonl, submissions.jsonl)")
    export.add_argument("--out", required=True, help="the JSON lines file to write")
    export.add_argument("--format", choices=("rankings", "pairs", "flags"), default="rankings")
    export.add_argument(
        "--merge", action="store_true", help="one ranking per item: mean rank over labellers"
    )
    stats = actions.add_parser("stats", help="agreement, position bias, time, skips and flags")
    stats.add_argument("labels", help="labels folder (candidates.jsonl, submissions.jsonl)")
    stats.add_argument("--json", action="store_true", help="print the numbers as JSON")
    imports = actions.add_parser("import", help="rankings from Argilla or Label Studio")
    imports.add_argument(
        "source", choices=("argilla", "label-studio-ranker", "label-studio-pairwise")
    )
    imports.add_argument("file", help="the tool's JSON export")
    imports.add_argument("--out", required=True, help="labels folder to write")
    imports.add_argument("--prompt-field", help="field holding the prompt (default: prompt)")
    imports.add_argument(
        "--response-fields", help="comma-separated fields holding the responses (Argilla, Pairwise)"
    )
    imports.add_argument("--question", help="Argilla: the ranking question (default: ranking)")
    imports.add_argument("--items-field", help="Ranker: the list of items (default: items)")
    imports.add_argument("--text-field", help="Ranker: an item's text (default: body)")
    serve = actions.add_parser(
        "serve", help="the labelling page: people rank the candidates in a browser"
    )
    serve.add_argument("labels", help="labels folder holding candidates.jsonl")
    serve.add_argument("--db", help="the SQLite label store (default: LABELS/labels.db)")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; another prints a "
        "warning)",
    )
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: a free one)")
    serve.add_argument("--guidelines", help="a text file shown on the page")
    serve.add_argument(
        "--overlap",
        type=float,
        help="share of the items ranked by several labellers (default 0.1, or the store's)",
    )
    serve.add_argument(
        "--overlap-labellers",
        type=int,
        help="labellers per overlapping item (default 2, or the store's)",
    )
    serve.add_argument(
        "--seed",
        type=int,
        help="picks the overlapping items and the response orders (default 0, or the store's)",
    )
    serve.add_argument(
        "--labellers", help="comma-separated names, the only ones accepted (default: anyone)"
    )
    serve.add_argument(
        "--hold-minutes",
        type=float,
        default=10.0,
        help="an item on someone's screen is theirs alone this long after they opened it; "
        "after that it may go to another labeller too, when nothing else is left (default 10)",
    )


def _label_serve(args) -> None:
    try:
        from rlhfkit.labelling.server import run_label_server
    except ModuleNotFoundError as error:
        if error.name not in ("starlette", "uvicorn"):
            raise
        raise RlhfkitError(
            f"rlhfkit label serve needs {error.name}: pip install -e '.[label]' in the "
            "rlhfkit checkout"
        ) from None
    folder = Path(args.labels)
    names = args.labellers.split(",") if args.labellers else []
    try:
        run_label_server(
            candidates=folder / "candidates.jsonl",
            db=args.db or folder / "labels.db",
            host=args.host,
            port=args.port,
            guidelines=args.guidelines,
            overlap=args.overlap,
            overlap_labellers=args.overlap_labellers,
            seed=args.seed,
            labellers=tuple(name.strip() for name in names if name.strip()),
            hold_minutes=args.hold_minutes,
        )
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped: a normal end, status 0
        pass
    print(f"labelling server stopped; every answer is in {args.db or folder / 'labels.db'}")


def print_out(text: str) -> None:
    """Print a command's output. A reader that stops early (`| head -1`) closes the pipe: end
    quietly with the status a shell gives a command killed by SIGPIPE, as other tools do."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python flushes stdout again on exit, which would fail and print a warning: send that
        # flush to /dev/null instead
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE (13)


def run_label(args) -> None:
    if args.action == "serve":
        return _label_serve(args)
    from rlhfkit.labelling.candidates import (
        CANDIDATES_FILE,
        SUBMISSIONS_FILE,
        check_new_labels_folder,
        read_labels,
        write_labels,
    )

    if args.action == "import":
        from rlhfkit.labelling.importers import import_labels

        check_new_labels_folder(args.out)  # before reading: nothing is overwritten
        fields = tuple(args.response_fields.split(",")) if args.response_fields else None
        items, submissions = import_labels(
            args.source,
            args.file,
            prompt_field=args.prompt_field,
            response_fields=fields,
            question=args.question,
            items_field=args.items_field,
            text_field=args.text_field,
        )
        folder = write_labels(args.out, items, submissions)
        print_out(f"{len(items)} items, {len(submissions)} submissions written to {folder}")
        return
    items, submissions = read_labels(args.labels)
    if args.action == "export":
        from rlhfkit.labelling.export import write_export

        own = [
            Path(args.labels) / name for name in (CANDIDATES_FILE, SUBMISSIONS_FILE, "labels.db")
        ]
        if any(Path(args.out).resolve() == path.resolve() for path in own):
            raise RlhfkitError(f"--out {args.out} is one of the labels folder's own files")
        rows = write_export(items, submissions, args.out, args.format, merge=args.merge)
        print_out(f"{rows} {args.format} rows written to {args.out}")
    else:
        from rlhfkit.labelling.stats import label_stats, render_stats

        stats = label_stats(items, submissions)
        print_out(json.dumps(stats, indent=2) if args.json else render_stats(stats))
