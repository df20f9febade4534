"""Feedback on responses beyond the reward model: labellers, AI judges (RLAIF), and
critique and revise (Constitutional AI)."""
