"""Built-in tasks: each module owns its data generator, its reward() and its evaluate()."""
