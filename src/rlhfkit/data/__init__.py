"""Datasets: formats and validation (`formats`), reading files and the Hub (`loading`),
tokenising with a completion mask (`tokenize`) and padding into batches (`collate`)."""
