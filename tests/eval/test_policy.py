"""Win rates of one policy against another on a task, by its gold score."""

from rlhfkit.data.formats import PromptExample
from rlhfkit.eval.policy import gold_win_rate
from rlhfkit.eval.win_rate import wilson_interval
from rlhfkit.models.loading import load_causal_lm, load_tokenizer


class LengthTask:
    """A stand-in task whose gold score is the answer's length."""

    def reward(self, prompt, response):
        return float(len(response))


def test_a_policy_against_itself_ties_on_chat_prompts_drawn_twice(tiny_model_dir):
    # chat prompts (lists: not hashable) are clustered by their first occurrence; a policy
    # against itself ties every comparison, 3 samples of 2 distinct questions drawn 3 times
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    questions = [[{"role": "user", "content": text}] for text in ("Hi there.", "How are you?")]
    prompts = [PromptExample(prompt=q) for q in (*questions, questions[0])]
    rate = gold_win_rate(
        model, model, tokenizer, LengthTask(), prompts, max_new_tokens=4, samples_per_prompt=3
    )
    assert (rate.ties, rate.n, rate.rate) == (9, 9, 0.5)
    # every outcome the same: each distinct question counts once
    assert (rate.low, rate.high) == wilson_interval(1.0, 2)
