import dataclasses
import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaForCausalLM,
)

from rlhfkit.data.ranking_batch import RankedGroup
from rlhfkit.data.steps import EncodedSteps
from rlhfkit.data.tokenize import EncodedExample
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models.reward import RewardModel
from rlhfkit.rewards.builder import build_reward_source
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.advice import AdviceTask, gold_score
from rlhfkit.tasks.advice_writer import write_reply
from rlhfkit.tasks.arith import ArithTask
from rlhfkit.train.reward import (
    RewardConfig,
    RewardObjective,
    check_reward_config,
    evaluate_reward_model,
    item_tokens,
    load_reward_data,
    train_reward_model,
    whole_batch_reward_stats,
)

K = 4


def gold_ranking(prompt, rng) -> dict:
    """K replies ordered by the noise-free gold score; equal scores share a rank (a tie)."""
    topic = prompt.metadata["topic"]
    replies = (write_reply(rng, topic) for _ in range(K))
    scored = sorted(((gold_score(topic, r), r) for r in replies), key=lambda pair: -pair[0])
    distinct = sorted({score for score, _ in scored}, reverse=True)
    return {
        "prompt": prompt.prompt,
        "responses": [r for _, r in scored],
        "ranks": [distinct.index(score) for score, _ in scored],
    }


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def advice_rankings(tmp_path_factory):
    rng = random.Random(0)
    rows = [gold_ranking(p, rng) for p in AdviceTask().prompts(180, rng)]
    folder = tmp_path_factory.mktemp("rankings")
    return write_jsonl(folder / "train.jsonl", rows[:150]), write_jsonl(
        folder / "eval.jsonl", rows[150:]
    )


def config(model, train, held_out, **overrides) -> RewardConfig:
    settings = dict(
        model=str(model),
        train_data=train,
        eval_data=held_out,
        batch_size=8,
        max_steps=40,
        lr=3e-3,
        warmup_steps=3,
        eval_every=40,
        save_every=0,
        progress=False,
        tensorboard=False,
    )
    return RewardConfig(**{**settings, **overrides})


def test_reward_model_learns_gold_rankings(tiny_model_dir, advice_rankings, tmp_path):
    cfg = config(tiny_model_dir, *advice_rankings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    held_out = load_reward_data(cfg, tokenizer, cfg.eval_data, "eval")
    torch.manual_seed(cfg.seed)  # a seeded head initialisation, like the run's
    untrained = evaluate_reward_model(
        RewardModel.from_pretrained(tiny_model_dir), held_out, cfg, tokenizer.pad_token_id
    )

    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    result = train_reward_model(cfg, run)
    [(step, accuracy)] = result.eval_accuracy
    print(f"held-out pair accuracy: untrained {untrained:.3f}, trained {accuracy:.3f}")
    assert step == 40 and result.evals == [(40, {"accuracy": accuracy})]
    assert [row["step"] for row in result.history] == list(range(1, 41))
    assert accuracy >= 0.65
    assert accuracy >= untrained + 0.1
    assert sum(result.train_losses[-10:]) / 10 < result.train_losses[0]
    assert AutoModelForSequenceClassification.from_pretrained(run.final).config.num_labels == 1


def test_ensemble_with_imitation_and_centering_saves_three_heads(
    tiny_model_dir, advice_rankings, tmp_path
):
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    cfg = config(
        tiny_model_dir,
        *advice_rankings,
        num_heads=3,
        imitation_coef=0.5,
        centering_coef=0.01,
        max_steps=6,
        eval_every=6,
    )
    result = train_reward_model(cfg, run)
    assert len(result.train_losses) == 6 and all(torch.isfinite(torch.tensor(result.train_losses)))
    metrics = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert all("imitation_loss" in row and "bt_loss" in row for row in metrics)
    assert all(row["reward_head_std"] > 0 for row in metrics)  # three heads, their spread
    # the total adds the imitation and centring terms to the Bradley-Terry loss
    assert all(row["loss"] > row["bt_loss"] + 0.5 * row["imitation_loss"] - 1e-6 for row in metrics)
    saved = AutoModelForSequenceClassification.from_pretrained(run.final)
    assert saved.config.num_labels == 3
    assert RewardModel.from_pretrained(run.final, num_heads=3).num_heads == 3


def test_process_reward_model_fits_step_labels(tiny_model_dir, tmp_path):
    """Step accuracy beats always answering the majority label. Measured on the training
    solutions: telling a wrong sum from a right one on new problems needs a model that can add,
    which no model small enough for a unit test learns in a few dozen steps."""
    examples = ArithTask().step_examples(32, random.Random(0))
    data = write_jsonl(tmp_path / "steps.jsonl", [dataclasses.asdict(e) for e in examples])
    labels = [label for e in examples for label in e.labels]
    majority = max(sum(labels), len(labels) - sum(labels)) / len(labels)

    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    cfg = config(
        tiny_model_dir,
        data,
        data,
        objective=RewardObjective.PROCESS,
        batch_size=16,
        lr=1e-2,
        # 60 steps: at 40 the fixture's data of 2026-12-07 reached 0.836, under the bound
        max_steps=60,
        eval_every=20,
    )
    result = train_reward_model(cfg, run)
    print(f"majority {majority:.3f}, step accuracy {result.eval_accuracy}")
    assert result.eval_accuracy[-1][1] >= majority + 0.2


def untied_copy(model_dir, out):
    """The tiny model with a separate output projection, as most larger models have."""
    config = AutoConfig.from_pretrained(model_dir)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def resume_matches_uninterrupted(model_dir, data, tmp_path, **overrides) -> bool:
    """Run 4 steps with a checkpoint at step 2, then resume a copy of the run from that
    checkpoint in this same process: do both end with the same weights?"""
    cfg = config(model_dir, data, "", max_steps=4, save_every=2, keep_last=1, **overrides)
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    train_reward_model(cfg, run)
    uninterrupted = load_file(run.final / "model.safetensors")
    shutil.rmtree(run.final)
    assert [p.name for p in run.checkpoints.iterdir()] == ["step_00000002"]
    train_reward_model(cfg, prepare_run_dir(run.root, resume=True, overwrite=False), resume=True)
    resumed = load_file(run.final / "model.safetensors")
    return all(torch.equal(uninterrupted[name], resumed[name]) for name in uninterrupted)


def test_resume_in_process_with_imitation(tiny_model_dir, advice_rankings, tmp_path):
    assert resume_matches_uninterrupted(
        tiny_model_dir, advice_rankings[0], tmp_path, imitation_coef=0.5, num_heads=2
    )


def test_resume_with_imitation_and_untied_embeddings(tiny_model_dir, advice_rankings, tmp_path):
    untied = untied_copy(tiny_model_dir, tmp_path / "untied")
    assert resume_matches_uninterrupted(untied, advice_rankings[0], tmp_path, imitation_coef=0.5)


def test_lora_reward_model_learns_resumes_and_saves_a_plain_classifier(
    tiny_model_dir, advice_rankings, tmp_path
):
    """Adapters on the backbone plus the score head train; the saved model is a plain sequence
    classifier with them merged (embeddings and norms untouched), and a run resumed from a
    checkpoint ends with the same weights."""
    assert resume_matches_uninterrupted(
        tiny_model_dir, advice_rankings[0], tmp_path / "resume", lora_r=4, imitation_coef=0.5
    )
    cfg = config(tiny_model_dir, *advice_rankings, lora_r=8, lora_alpha=16)
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    result = train_reward_model(cfg, run)
    assert sum(result.train_losses[-10:]) / 10 < result.train_losses[0]
    [(_, accuracy)] = result.eval_accuracy
    assert accuracy >= 0.6
    base, final = (
        load_file(tiny_model_dir / "model.safetensors"),
        load_file(run.final / "model.safetensors"),
    )
    assert not any("lora" in key for key in final) and "score.weight" in final
    backbone = [key for key in final if key.startswith("model.")]
    moved = [k for k in backbone if not torch.equal(final[k], base[k])]
    assert moved and all("proj" in key for key in moved)
    loaded = AutoModelForSequenceClassification.from_pretrained(run.final)
    assert loaded.config.num_labels == 1


def test_a_training_item_counts_every_token_the_model_reads():
    # the progress bar's tokens per second: each response of a group, prompt included
    pair = RankedGroup(
        responses=[
            EncodedExample([1, 2, 3], [0, 1, 1], False),
            EncodedExample([1, 2], [0, 1], False),
        ],
        ranks=(0, 1),
    )
    assert item_tokens(pair) == 5
    assert item_tokens(EncodedSteps(input_ids=[4, 5, 6, 7], step_ends=[1, 3], labels=[1, 0])) == 4


def test_a_steps_reward_spread_is_the_whole_batchs_however_it_is_split():
    # micro-batches (grad_accum) and ranks each see a share: their stds averaged by rows were
    # 0.0287 on one process, 0.0259 on two and 0.0234 on three; summed raw moments are not split
    rewards = torch.tensor([0.3, -1.2, 0.5, 2.0, -0.4, 0.1, 0.9], dtype=torch.float64)
    spreads = torch.tensor([0.1, 0.4, 0.0, 0.2, 0.3, 0.1, 0.6], dtype=torch.float64)  # over heads
    stats = {"reward_sum": 0.0, "reward_sq_sum": 0.0, "reward_count": 0.0, "head_std_sum": 0.0}
    for rows in (slice(0, 2), slice(2, 3), slice(3, None)):
        stats["reward_sum"] += rewards[rows].sum().item()
        stats["reward_sq_sum"] += rewards[rows].square().sum().item()
        stats["reward_count"] += rewards[rows].numel()
        stats["head_std_sum"] += spreads[rows].sum().item()
    whole_batch_reward_stats(stats)
    assert stats == pytest.approx(
        {
            "reward_mean": rewards.mean().item(),
            "reward_std": rewards.std().item(),
            "reward_head_std": 1.7 / 7,
        }
    )


SPLIT_DATA = {
    # rankings of four (six pairs) and of two (one): micro-batches of unequal pair counts
    RewardObjective.PAIRWISE: [
        {"prompt": "Q: sleep? A:", "responses": [" Rest.", " Read.", " Walk.", " Coffee."]},
        {"prompt": "Q: money? A:", "responses": [" Save it.", " Spend it."]},
    ],
    # a solution of three steps and one of one
    RewardObjective.PROCESS: [
        {
            "prompt": "Q: 3 + 4?",
            "completions": ["3 + 4 = 7.", "7 + 0 = 8.", "So 8."],
            "labels": [True, False, False],
        },
        {"prompt": "Q: 2 * 2?", "completions": ["2 * 2 = 4."], "labels": [True]},
    ],
}


@pytest.mark.parametrize(
    "objective, key",
    [(RewardObjective.PAIRWISE, "train_pair_accuracy"), (RewardObjective.PROCESS, "step_accuracy")],
)
def test_a_steps_accuracy_is_the_share_of_all_its_pairs_however_it_is_split(
    tiny_model_dir, tmp_path, objective, key
):
    # micro-batches were averaged by prompts: one of 6 pairs and one of 1 counted alike
    data = write_jsonl(tmp_path / "data.jsonl", SPLIT_DATA[objective])
    accuracies = []
    for batch_size, grad_accum in ((2, 1), (1, 2)):
        cfg = config(
            tiny_model_dir,
            data,
            "",
            objective=objective,
            batch_size=batch_size,
            grad_accum=grad_accum,
            max_steps=1,
            shuffle=False,
            seed=3,
        )
        run = prepare_run_dir(tmp_path / f"run{batch_size}", resume=False, overwrite=False)
        accuracies.append(train_reward_model(cfg, run).history[0][key])
    assert 0 < accuracies[0] < 1  # both kinds of outcome, or any weighting gives the same
    assert accuracies[1] == pytest.approx(accuracies[0])


def test_imitation_from_a_saved_untied_reward_model_is_refused(
    tiny_model_dir, advice_rankings, tmp_path
):
    # a saved reward model keeps no LM head: loading it as a causal LM drew a random one
    untied = untied_copy(tiny_model_dir, tmp_path / "untied")
    first = prepare_run_dir(tmp_path / "first", resume=False, overwrite=False)
    train_reward_model(config(untied, advice_rankings[0], "", max_steps=1), first)
    cfg = config(first.final, advice_rankings[0], "", max_steps=1, imitation_coef=0.5)
    run = prepare_run_dir(tmp_path / "second", resume=False, overwrite=False)
    with pytest.raises(RlhfkitError, match="keeps no LM head for the imitation term"):
        train_reward_model(cfg, run)


@pytest.mark.parametrize(
    "setting", [{"imitation_coef": 0.5}, {"centering_coef": 0.1}, {"truncation": "drop"}]
)
def test_the_process_objective_refuses_settings_it_would_ignore(tiny_model_dir, tmp_path, setting):
    # they were accepted and did nothing: drop kept a solution cut to the steps that fit
    steps = {"prompt": "Q: 3 + 4?", "completions": ["3 + 4 = 7.", "So 7."], "labels": [1, 1]}
    data = write_jsonl(tmp_path / "steps.jsonl", [steps])
    cfg = config(
        tiny_model_dir, data, "", objective=RewardObjective.PROCESS, max_steps=1, **setting
    )
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    with pytest.raises(ConfigError, match=f"{next(iter(setting))}=.* process objective"):
        train_reward_model(cfg, run)


def test_the_process_objective_refuses_an_ensemble(tiny_model_dir, tmp_path):
    # num_heads=3 was accepted: no bootstrap, one BCE on the heads' mean logit, no ensemble
    steps = {"prompt": "Q: 3 + 4?", "completions": ["3 + 4 = 7.", "So 7."], "labels": [1, 1]}
    data = write_jsonl(tmp_path / "steps.jsonl", [steps])
    cfg = config(tiny_model_dir, data, "", objective=RewardObjective.PROCESS, num_heads=3)
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    with pytest.raises(ConfigError, match="num_heads=3 with objective=process") as refusal:
        train_reward_model(cfg, run)
    assert "\n" not in str(refusal.value)


def test_the_pairwise_objective_refuses_a_step_separator(tiny_model_dir, advice_rankings, tmp_path):
    # it was silently ignored; at its default it says nothing
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    with pytest.raises(
        ConfigError, match="step_separator=.* objective=process, not of objective=pairwise"
    ):
        train_reward_model(config(tiny_model_dir, *advice_rankings, step_separator="\n"), run)
    check_reward_config(config(tiny_model_dir, *advice_rankings, step_separator=" "))


def test_a_trained_process_reward_model_is_marked_and_refused_as_an_outcome_reward(
    tiny_model_dir, advice_rankings, tmp_path
):
    # read at the EOS token, where it never trained, it was silently PPO's or GRPO's reward
    steps = {"prompt": "Q: 3 + 4?", "completions": ["3 + 4 = 7.", "So 7."], "labels": [1, 1]}
    data = write_jsonl(tmp_path / "steps.jsonl", [steps])
    prm = prepare_run_dir(tmp_path / "prm", resume=False, overwrite=False)
    process = dict(objective=RewardObjective.PROCESS, max_steps=1)
    train_reward_model(config(tiny_model_dir, data, "", **process), prm)
    saved = json.loads((prm.final / "config.json").read_text())
    assert saved["rlhfkit_reward_objective"] == "process"
    build = dict(task_name=None, tokenizer=None, device="cpu", batch_size=4, max_length=64)
    with pytest.raises(RlhfkitError, match=f"'model:{prm.final}': .* is a process reward model"):
        build_reward_source(f"model:{prm.final}", **build, uncertainty_coef=0.0, timeout_s=None)
    # what it serves: training on as a process reward model
    again = prepare_run_dir(tmp_path / "again", resume=False, overwrite=False)
    train_reward_model(config(prm.final, data, data, **process), again)
    # a pairwise run marks its model so, and it scores as an outcome reward
    rm = prepare_run_dir(tmp_path / "rm", resume=False, overwrite=False)
    train_reward_model(config(tiny_model_dir, advice_rankings[0], "", max_steps=1), rm)
    saved = json.loads((rm.final / "config.json").read_text())
    assert saved["rlhfkit_reward_objective"] == "pairwise"
    build_reward_source(f"model:{rm.final}", **build, uncertainty_coef=0.0, timeout_s=None)
