"""Reward sources behind one interface: reward models, user functions, task verifiers,
process rewards, and weighted sums of them."""
