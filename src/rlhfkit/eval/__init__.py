"""Evaluation: policies on built-in tasks, reward-model accuracy and its yardsticks."""
