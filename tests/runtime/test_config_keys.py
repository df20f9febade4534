"""What an unknown config key gets back: the key most likely meant."""

import pytest

from rlhfkit.runtime.config_keys import unknown_key

VALID = ["lr", "max_steps", "batch_size", "micro_batch_size", "loss_aggregation"]


@pytest.mark.parametrize(
    "name, hint",
    [
        ("LR", " (did you mean 'lr'?)"),  # another case
        ("Max_Steps", " (did you mean 'max_steps'?)"),
        ("lrr", " (did you mean 'lr'?)"),  # a close spelling
        ("learnign_rate", " (did you mean 'lr'?)"),  # a close spelling of TRL's name
        ("learning_rate", " (TRL's name; rlhfkit's is 'lr')"),
        # the first of rlhfkit's names the config has: a policy trainer has no batch_size
        ("loss_type", " (TRL's name; rlhfkit's is 'loss_aggregation')"),
        ("zzz", ""),
    ],
)
def test_an_unknown_key_names_the_one_most_likely_meant(name, hint):
    assert str(unknown_key("", name, VALID)) == f"unknown config key '{name}'{hint}"


def test_a_key_in_a_section_is_named_with_its_section():
    error = unknown_key("sft", "LR", VALID)
    assert str(error) == "unknown config key 'sft.LR' (did you mean 'sft.lr'?)"
    policy = ["micro_batch_size", "mini_batch_size"]
    assert str(unknown_key("", "per_device_train_batch_size", policy)).endswith(
        "(TRL's name; rlhfkit's is 'micro_batch_size')"
    )
