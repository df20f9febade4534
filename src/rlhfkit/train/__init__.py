"""Trainers: orchestration only, each reading like numbered pseudocode."""
