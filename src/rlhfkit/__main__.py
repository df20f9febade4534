"""`python -m rlhfkit` runs the command line."""

from rlhfkit.cli import main

main()
