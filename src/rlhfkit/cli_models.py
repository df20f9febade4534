"""`rlhfkit models`: bring a model in from a GGUF file, or make a tiny one for your own text.

Part of the command line (cli.py registers it): parse, call, print. Heavy imports happen when a
command runs, so `rlhfkit --help` stays fast.
"""


def add_models_parser(sub) -> None:
    models = sub.add_parser(
        "models", help="models: import a GGUF file, or build a tiny model for your own text"
    )
    actions = models.add_subparsers(dest="action", required=True)
    imports = actions.add_parser(
        "import",
        help="dequantize a .gguf file into a plain Hugging Face directory (safetensors, config, "
        "tokenizer, chat template)",
    )
    imports.add_argument("file", help="the .gguf file")
    imports.add_argument("--out", required=True, help="the directory to write (new or empty)")
    tiny = actions.add_parser(
        "tiny",
        help="train a byte-level BPE tokenizer on your text and initialise a tiny Llama with it",
    )
    tiny.add_argument(
        "--corpus",
        required=True,
        help="your text: a plain text file (one text per line) or a dataset file (.jsonl, "
        ".json, .parquet; every string of every row)",
    )
    tiny.add_argument("--out", required=True, help="the directory to write (new or empty)")
    sizes = [
        ("--vocab-size", 1024, "tokenizer vocabulary, at most"),
        ("--hidden-size", 128, "model width"),
        ("--layers", 4, "decoder layers"),
        ("--heads", 4, "attention heads (a divisor of --hidden-size)"),
        ("--intermediate-size", 384, "MLP width"),
        ("--max-positions", 256, "longest sequence, in tokens"),
        ("--seed", 0, "initialises the weights"),
    ]
    for flag, default, what in sizes:
        tiny.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")


def run_models(args) -> None:
    if args.action == "import":
        from rlhfkit.models.gguf_import import import_gguf

        out = import_gguf(args.file, args.out)
        print(f"model directory written to {out}")
        return
    _tiny(args)


def _tiny(args) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit.data.corpus import read_corpus
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.models.tiny import SPECIAL_TOKENS, new_tiny_model, tokens_per_word

    sizes = ("vocab_size", "hidden_size", "layers", "heads", "intermediate_size", "max_positions")
    for size in sizes:
        if getattr(args, size) < 1:
            raise RlhfkitError(f"--{size.replace('_', '-')} must be at least 1")
    # byte-level BPE starts from the 256 bytes, and the tokenizer adds its 4 special tokens
    smallest = 256 + len(SPECIAL_TOKENS)
    if args.vocab_size < smallest:
        raise RlhfkitError(
            f"--vocab-size {args.vocab_size}: at least {smallest} (the 256 bytes a byte-level "
            f"BPE starts from and {len(SPECIAL_TOKENS)} special tokens)"
        )
    if args.hidden_size % args.heads:
        raise RlhfkitError(
            f"--hidden-size {args.hidden_size} must be a multiple of --heads {args.heads}"
        )
    corpus = read_corpus(args.corpus)
    out = new_tiny_model(
        args.out,
        corpus,
        seed=args.seed,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=args.heads,
        intermediate_size=args.intermediate_size,
        max_positions=args.max_positions,
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(out).parameters())
    print(
        f"tiny model written to {out}: {parameters / 1e6:.2f}M parameters, a vocabulary of "
        f"{len(tokenizer)} tokens trained on {len(corpus)} texts, "
        f"{tokens_per_word(tokenizer, corpus):.2f} tokens per word on them"
    )
