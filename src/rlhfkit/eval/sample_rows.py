"""Every answer an evaluation scored, one JSON line each (`samples.jsonl`): the numbers of
`eval.json` recomputed from them, or any other question asked of them.

A row: `model`, `prompt_index` (into the evaluated prompts), `prompt`, `kind` (`greedy`, or
`sampled` with its `sample` index), `response`, `tokens`, `gold` (its gold score), `proxy` (the
reward model's score, or null), `kl_k1` and `kl_k3` (of a sampled answer, with a reference; else
null), and on a task with a final answer `final_answer` and `correct`.
"""

from rlhfkit.data.formats import PromptExample
from rlhfkit.eval.model_eval import ModelEval
from rlhfkit.tasks.base import HasFinalAnswer


def sample_rows(model: str, prompts: list[PromptExample], result: ModelEval, task) -> list[dict]:
    """`result`'s greedy answers (one per prompt) then its sampled ones, in prompt order."""
    rows = []
    for kind, samples, gold, proxy in (
        ("greedy", result.greedy, result.greedy_scores, result.greedy_proxy),
        ("sampled", result.sampled, result.sampled_scores, result.sampled_proxy),
    ):
        flat = 0  # the scores are flat: (prompts * samples) in prompt order
        for index, (prompt, texts) in enumerate(zip(prompts, samples.texts)):
            for sample, text in enumerate(texts):
                row = {
                    "model": model,
                    "prompt_index": index,
                    "prompt": prompt.prompt,
                    "kind": kind,
                    **({"sample": sample} if kind == "sampled" else {}),
                    "response": text,
                    "tokens": samples.lengths[index][sample],
                    "gold": gold[flat],
                    "proxy": proxy[flat] if proxy else None,
                    "kl_k1": _kl(samples.kl, "k1", index, sample),
                    "kl_k3": _kl(samples.kl, "k3", index, sample),
                }
                if isinstance(task, HasFinalAnswer):
                    answer = task.final_answer(text)
                    row["final_answer"] = answer
                    row["correct"] = answer is not None and answer == prompt.answer
                rows.append(row)
                flat += 1
    return rows


def _kl(kl: dict[str, list[list[float]]], name: str, index: int, sample: int) -> float | None:
    return kl[name][index][sample] if name in kl else None
