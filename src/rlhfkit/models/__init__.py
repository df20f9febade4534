"""Models: loading Hugging Face models, the reward/value head, the tiny-model factory."""
