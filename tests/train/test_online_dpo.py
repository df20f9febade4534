import dataclasses
import json
import math
import random
import shutil
import threading
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhfkit.data.ranking_batch import RankedGroup
from rlhfkit.data.tokenize import EncodedExample
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.labelling.records import Submission
from rlhfkit.labelling.store import LabelStore, shown_order
from rlhfkit.runtime.rundir import has_progress, prepare_run_dir
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.train.batching import stream_rows
from rlhfkit.train.dpo_losses import make_batch, policy_logprobs
from rlhfkit.train.online_dpo import (
    OnlineDPOConfig,
    check_online_config,
    spread_ranked,
    train_online_dpo,
)
from rlhfkit.train.online_pool import (
    assemble_pool,
    group_from_ranks,
    online_plan,
    rollout_examples,
)
from rlhfkit.train.policy_run import PolicyRun
from tests.train.conftest import length_reward_spec

from .test_reward import gold_ranking, write_jsonl

LOG_2 = math.log(2.0)


def config(model, tmp_path, **overrides) -> OnlineDPOConfig:
    # the reward labeller ranks by response length: a signal a random tiny model can climb
    settings = dict(
        model=str(model),
        task="arith",
        reward=length_reward_spec(tmp_path),
        labeller="reward",
        train_prompts=64,
        eval_prompts=4,
        eval_max_new_tokens=8,
        prompts_per_step=4,
        samples_per_prompt=2,
        max_new_tokens=12,
        max_steps=4,
        lr=2e-2,
        warmup_steps=1,
        eval_every=100,
        save_every=0,
        progress=False,
        tensorboard=False,
    )
    return OnlineDPOConfig(**{**settings, **overrides})


def run_dir(tmp_path, name="run"):
    return prepare_run_dir(tmp_path / name, resume=False, overwrite=False)


def mean(values) -> float:
    return sum(values) / len(values)


def test_online_dpo_climbs_the_labellers_preference(tiny_model_dir, tmp_path):
    run = run_dir(tmp_path)
    # ranks without ties: with ties the first loss is Breslow's, above log 4!
    reward = length_reward_spec(tmp_path, distinct=True)
    result = train_online_dpo(
        config(tiny_model_dir, tmp_path, reward=reward, samples_per_prompt=4, max_steps=24), run
    )
    history = result.history
    # Plackett-Luce over 4 responses with the policy equal to its reference: log 4! = log 24
    assert history[0]["loss"] == pytest.approx(math.log(24.0), abs=1e-5)
    # the policy's and the reference's log-probs come from two paths: equal up to rounding
    assert history[0]["kl_per_sequence"] == pytest.approx(0.0, abs=1e-4)
    assert history[0]["margin"] == pytest.approx(0.0, abs=1e-5)
    assert history[0]["accuracy"] == 0.5  # margins within rounding are ties
    rewards = [row["reward_mean"] for row in history]
    assert mean(rewards[-3:]) > 1.5 * mean(rewards[:3])
    assert mean([row["accuracy"] for row in history[-4:]]) > 0.5
    assert history[-1]["kl_per_sequence"] > 0
    # 24 steps of 4 prompts, each ranking of 4 costing C(4,2) = 6 comparisons
    assert result.labels_used == 24 * 4 * 6
    assert [row["labels_used"] for row in history] == [24 * step for step in range(1, 25)]
    lines = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    # step 0: the starting policy's evaluation alone
    assert [row["step"] for row in lines] == list(range(0, 25))
    assert all(row["stage"] == "online_dpo" for row in lines) and "loss" not in lines[0]
    metrics = lines[1:]
    for key in (
        "loss",
        "margin",
        "accuracy",
        "rewards_chosen",
        "kl_per_sequence",
        "kl_per_token",
        "labels_used",
        "gold_score",
        "reward_mean",
        "response_length",
        "grad_norm",
        "time_generation",
        "time_labelling",
        "time_update",
    ):
        assert key in metrics[0], key
    assert [step for step, _ in result.evals] == [0, 24] and "eval_accuracy" in metrics[-1]
    AutoModelForCausalLM.from_pretrained(run.final)


@pytest.mark.parametrize(
    "loss, k", [("sigmoid", 2), ("plackett_luce", 2), ("sigmoid", 4), ("ipo", 3)]
)
def test_first_step_loss_when_the_policy_is_its_reference(tiny_model_dir, tmp_path, loss, k):
    # every implicit reward is 0: -log sigmoid(0) = log 2 for each pair (weights 1/C(K,2) sum
    # to 1 per prompt); IPO: (0 - 1/(2 beta))^2 = 25 at beta = 0.1
    cfg = config(tiny_model_dir, tmp_path, loss=loss, samples_per_prompt=k, max_steps=1)
    first = train_online_dpo(cfg, run_dir(tmp_path)).history[0]
    assert first["loss"] == pytest.approx(25.0 if loss == "ipo" else LOG_2, rel=1e-5)
    assert first["accuracy"] == 0.5


def test_the_run_stops_when_the_label_budget_is_spent(tiny_model_dir, tmp_path):
    # 40 comparisons buy 13 rankings of 3 (3 each): batches of 4, 4, 4, then the last 1
    cfg = config(tiny_model_dir, tmp_path, samples_per_prompt=3, label_budget=40, max_steps=10)
    result = train_online_dpo(cfg, run_dir(tmp_path))
    assert [row["online_groups"] for row in result.history] == [4, 4, 4, 1]
    assert [row["labels_used"] for row in result.history] == [
        12,
        24,
        36,
        39,
    ] and result.labels_used == 39
    assert [step for step, _ in result.evals] == [
        0,
        4,
    ]  # the end of the run is where the budget ended


def test_iterative_labels_t_batches_at_each_refresh(tiny_model_dir, tmp_path):
    cfg = config(
        tiny_model_dir,
        tmp_path,
        regime="iterative",
        refresh_every=3,
        samples_per_prompt=3,
        max_steps=5,
    )
    history = train_online_dpo(cfg, run_dir(tmp_path)).history
    # refreshes at steps 0 (for steps 0-2) and 3 (for steps 3-4): 4 prompts * 3 comparisons a step
    assert [row["labels_used"] for row in history] == [36, 36, 36, 60, 60]
    assert ["time_generation" in row for row in history] == [True, False, False, True, False]
    # each refresh's prompts with a preference (a prompt whose samples all score alike has
    # none), spread over its steps as evenly as they go
    for refresh in (history[:3], history[3:]):
        groups = [row["online_groups"] for row in refresh]
        assert 1 <= min(groups) and max(groups) <= 4 and max(groups) - min(groups) <= 1


def test_a_reference_refreshed_to_the_policy_starts_every_pool_at_log_2(tiny_model_dir, tmp_path):
    cfg = config(
        tiny_model_dir,
        tmp_path,
        regime="iterative",
        refresh_every=2,
        refresh_reference=True,
        loss="sigmoid",
    )
    run = run_dir(tmp_path)
    losses = [row["loss"] for row in train_online_dpo(cfg, run).history]
    assert losses[0] == pytest.approx(LOG_2, abs=1e-5) and losses[2] == pytest.approx(
        LOG_2, abs=1e-5
    )
    assert abs(losses[1] - LOG_2) > 1e-4 and abs(losses[3] - LOG_2) > 1e-4
    # with a frozen reference the third step no longer starts at log 2
    frozen = train_online_dpo(
        config(tiny_model_dir, tmp_path, regime="iterative", refresh_every=2, loss="sigmoid"),
        run_dir(tmp_path, "frozen"),
    ).history
    assert abs(frozen[2]["loss"] - LOG_2) > 1e-4


@pytest.fixture(scope="module")
def offline_rankings(tmp_path_factory):
    rng = random.Random(0)
    rows = [
        gold_ranking(p, rng) for p in AdviceTask().prompts(40, rng)
    ]  # K = 4, C(4,2) = 6 labels each
    rows = [row for row in rows if len(set(row["ranks"])) > 1][:30]  # every row prefers something
    return write_jsonl(tmp_path_factory.mktemp("offline") / "rankings.jsonl", rows)


def test_hybrid_batches_mix_the_offline_share_into_online_samples(
    tiny_model_dir, tmp_path, offline_rankings
):
    cfg = config(
        tiny_model_dir,
        tmp_path,
        task="advice",
        regime="hybrid",
        offline_data=offline_rankings,
        offline_fraction=0.25,
        offline_max_labels=40,
        prompts_per_step=4,
        samples_per_prompt=2,
        label_budget=7,
        loss="sigmoid",
    )
    result = train_online_dpo(cfg, run_dir(tmp_path))
    # a quarter of 4 prompts is offline; 7 labels buy 3 + 3 + 1 online pairs
    assert [(row["online_groups"], row["offline_groups"]) for row in result.history] == [
        (3, 1),
        (3, 1),
        (1, 1),
    ]
    # 6 rankings of 4 fit in 40 labels
    assert result.labels_used == 7 and result.offline_labels == 36
    # sigmoid: each group's pairs weigh 1/C(K,2) together, so a ranking of 4 and a pair both start
    # at log 2
    assert result.history[0]["loss"] == pytest.approx(LOG_2, abs=1e-5)


@pytest.mark.parametrize(
    "budget, k, expected",
    [
        (0, 2, [4, 4, 4]),  # no budget: max_steps batches
        (10, 2, [4, 4, 2]),  # a pair costs 1
        (28, 3, [4, 4, 1]),  # a ranking of 3 costs C(3,2) = 3: 9 rankings, 27 spent
        (100, 8, [3]),  # C(8,2) = 28: 3 rankings, 84 comparisons spent
        (1000, 2, [4, 4, 4]),  # more budget than max_steps can use
    ],
)
def test_online_plan_hand_counts(budget, k, expected):
    assert (
        online_plan(max_steps=3, online_per_step=4, samples_per_prompt=k, label_budget=budget)
        == expected
    )


class IndexReference:
    """Stands in for the reference: each response's "log-prob" is its group's first token."""

    def table(self, groups, **_):
        return [torch.full((len(g.responses),), float(g.responses[0].input_ids[0])) for g in groups]


def group(token: int, size: int = 2) -> RankedGroup:
    return RankedGroup(
        [EncodedExample([token, token], [False, True], truncated=False)] * size, tuple(range(size))
    )


def test_a_hybrid_pool_puts_each_steps_offline_rows_after_its_online_groups():
    online, offline = [group(100 + i) for i in range(5)], [group(i, size=4) for i in range(10)]
    pool = assemble_pool(
        start=3,
        plan=[2, 2, 1],
        samples_per_prompt=2,
        online_groups=online,
        gold=[1.0] * 10,
        rewards=[2.0] * 10,
        offline=offline,
        offline_per_step=3,
        seed=7,
        reference=IndexReference(),
        pad_token_id=0,
        batch_size=4,
        device=torch.device("cpu"),
        precision="fp32",
    )
    assert [pool.covers(step) for step in range(2, 7)] == [False, True, True, True, False]
    for step, first in ((3, 0), (4, 2), (5, 4)):
        batch = pool.at(step)
        count = batch.online
        assert batch.groups[:count] == online[first : first + count]
        assert batch.groups[count:] == [offline[row] for row in stream_rows(10, 3, 7, step)]
        # every group keeps its own reference log-probs, in order
        assert [t[0].item() for t in batch.ref_logprobs] == [
            g.responses[0].input_ids[0] for g in batch.groups
        ]
        assert batch.samples["gold_score"] == 1.0 and batch.samples["response_tokens"] == 2 * count
    assert [pool.at(step).online for step in (3, 4, 5)] == [2, 2, 1]


def test_pool_responses_are_the_sampled_tokens(tiny_model_dir, tmp_path):
    # the sequence log-prob of each pooled response, computed as DPO computes it, is the sum of
    # the sampling log-probs (T = 1): same tokens, same positions, left padding removed
    cfg = config(tiny_model_dir, tmp_path, task="advice")
    run = PolicyRun(cfg, run_dir(tmp_path), resume=False, needs_reference=False, stage="online_dpo")
    rollout, _ = run.sample(run.prompts_for_step(0, 4), 3, max_new_tokens=12, temperature=1.0)
    assert not rollout.prompt_mask.all()
    examples = rollout_examples(rollout)
    # the labeller's order [2, 0, 1] (best first) as ranks of the samples 0, 1, 2
    groups = [group_from_ranks(examples[i * 3 : i * 3 + 3], (1, 2, 0)) for i in range(4)]
    with torch.no_grad():
        batch = make_batch(groups, run.models.tokenizer.pad_token_id, run.models.device)
        logprobs = policy_logprobs(run.models.policy, batch, cfg.precision)
    expected = rollout.logprobs.sum(dim=1).view(4, 3)[:, [2, 0, 1]].reshape(-1)
    assert torch.allclose(logprobs, expected, atol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(
            task="advice",
            labeller="annotator",
            regime="iterative",
            refresh_every=3,
            samples_per_prompt=3,
        ),
        dict(task="advice", regime="hybrid", refresh_reference=True, offline_fraction=0.5),
    ],
    ids=["iterative-annotator", "hybrid-refreshed-reference"],
)
def test_resuming_between_refreshes_repeats_the_uninterrupted_run(
    tiny_model_dir, tmp_path, offline_rankings, overrides
):
    if overrides["regime"] == "hybrid":
        overrides = {**overrides, "offline_data": offline_rankings}
    # the checkpoint at step 4 falls inside the pool sampled at step 3; step 6 samples and labels
    # again
    cfg = config(tiny_model_dir, tmp_path, max_steps=7, save_every=4, **overrides)
    full = run_dir(tmp_path, "full")
    uninterrupted = train_online_dpo(cfg, full)
    shutil.copytree(full.root, tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "final")
    resumed = prepare_run_dir(tmp_path / "resumed", resume=True, overwrite=False)
    result = train_online_dpo(cfg, resumed, resume=True)
    assert len(result.history) == 3 and result.labels_used == uninterrupted.labels_used
    a, b = (
        load_file(full.final / "model.safetensors"),
        load_file(resumed.final / "model.safetensors"),
    )
    assert all(torch.equal(a[name], b[name]) for name in a)
    rows = {  # the training steps (step 0: the starting evaluation, logged once)
        run: [json.loads(line) for line in run.metrics_path.read_text().splitlines()][1:]
        for run in (full, resumed)
    }
    assert [row["loss"] for row in rows[full]] == [row["loss"] for row in rows[resumed]]
    assert [row["labels_used"] for row in rows[full]] == [
        row["labels_used"] for row in rows[resumed]
    ]


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(samples_per_prompt=1), "samples_per_prompt=1: a preference needs at least 2"),
        (dict(refresh_every=3), "use regime=iterative"),
        (dict(regime="iterative"), "refresh_every >= 2"),
        (dict(regime="hybrid"), "regime=hybrid needs offline_data"),
        (dict(offline_data="x.jsonl"), "offline_data goes with regime=hybrid"),
        (
            dict(regime="hybrid", offline_data="x.jsonl", offline_fraction=0.1),
            "leaves 4 online and 0 offline",
        ),
        (
            dict(samples_per_prompt=4, label_budget=5),
            r"label_budget=5 cannot pay for one ranking .* \(6 comparisons\)",
        ),
        (dict(loss="ipo", label_smoothing=0.1), "set label_smoothing=0 or loss=sigmoid"),
        (dict(target_agreement=0.4), "target_agreement"),
        (dict(labeller="judge"), "labeller=judge needs judge_model=PATH"),
        # a judge named without labeller=judge used to be ignored: the annotator (or reward)
        # labelled every sample, silently
        (dict(judge_model="j"), "judge_model=j is read only with labeller=judge"),
        (
            dict(labeller="annotator", judge_model="j"),
            "judge_model=j is read only with labeller=judge, and labeller=annotator",
        ),
        # settings of one regime or labeller alone, set for another: they would change nothing
        (dict(offline_fraction=0.25), "offline_fraction=0.25 is read by regime=hybrid only"),
        (dict(offline_max_labels=10), "offline_max_labels=10 is read by regime=hybrid only"),
        (dict(human_port=9000), "human_port=9000 is read by labeller=human only: leave it out "),
        (
            dict(labeller="reward", annotator_temperature=2.0),
            "annotator_temperature=2.0 is read by labeller=annotator only",
        ),
    ],
)
def test_settings_that_contradict_the_regime_are_rejected(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        check_online_config(config("m", tmp_path, **override))


@pytest.mark.parametrize(
    "rankings, plan, expected",
    [
        ([(0, 1), (1, 0), (0, 0)], [2, 1], ([0, 1, 2], [2, 1])),  # nothing skipped: the plan
        ([(0, 1), None, (1, 0), (0, 1), (0, 1)], [3, 2], ([0, 2, 3, 4], [2, 2])),
        ([None, (0, 1), (0, 1), (1, 0), None, (0, 1), (0, 1)], [4, 3], ([1, 2, 3, 5, 6], [3, 2])),
        ([None, (0, 1), None], [1, 1, 1], None),  # fewer ranked prompts than steps: refused
    ],
)
def test_skipped_prompts_leave_the_refresh_and_the_rest_are_spread(rankings, plan, expected):
    if expected is None:
        with pytest.raises(RlhfkitError, match="1 of 3 prompts of a refresh have a preference"):
            spread_ranked(rankings, plan)
    else:
        assert spread_ranked(rankings, plan) == expected


def answer_as_people(labels_dir, answer, count: int) -> threading.Thread:
    """A thread that plays the people on the labelling page: once the run has queued items in
    `labels_dir/labels.db`, it answers `count` of them, each with `answer(item_id)` (ranks, or
    None to skip)."""

    def work():
        deadline = time.monotonic() + 120
        while not (labels_dir / "candidates.jsonl").exists():  # the store is set up by then
            time.sleep(0.02)
        store = LabelStore(labels_dir / "labels.db")
        while count > len(store.submissions()) and time.monotonic() < deadline:
            item = store.next_item("ann")
            if item is None:
                time.sleep(0.02)
                continue
            order = shown_order(store.seed, "ann", item.item_id, len(item.responses))
            store.submit(Submission(item.item_id, "ann", answer(item.item_id), order))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def human_config(model, tmp_path, **overrides) -> OnlineDPOConfig:
    settings = dict(
        labeller="human",
        human_serve=False,
        regime="iterative",
        refresh_every=2,
        prompts_per_step=2,
        samples_per_prompt=3,
        max_steps=2,
    )
    return config(model, tmp_path, **{**settings, **overrides})


def test_people_label_an_iterative_run_through_the_store(tiny_model_dir, tmp_path):
    # the first prompt is skipped; every other one gets the first two responses tied, best
    run = run_dir(tmp_path)
    people = answer_as_people(
        run.root / "labels", lambda item_id: None if item_id.endswith("p0000") else (0, 0, 1), 4
    )
    result = train_online_dpo(human_config(tiny_model_dir, tmp_path), run)
    people.join()
    history = result.history
    # one refresh of 2 steps * 2 prompts: the skipped prompt is dropped, the 3 ranked ones spread
    assert [row["online_groups"] for row in history] == [2, 1]
    assert result.labels_used == 4 * 3  # C(3,2) for every prompt put to people
    # Plackett-Luce with ties (Breslow) at the reference: each of the two tied best responses is
    # chosen among all 3 (log 3 each), the last among itself (0); untied it would be log 3!
    assert history[0]["loss"] == pytest.approx(2 * math.log(3.0), abs=1e-5)
    AutoModelForCausalLM.from_pretrained(run.final)


def test_a_run_that_timed_out_resumes_on_the_answers_in_the_store(tiny_model_dir, tmp_path):
    # nobody answers while the run waits, so each refresh times out; people answer while it is
    # stopped, and each resumed run asks only for what is missing
    cfg = human_config(tiny_model_dir, tmp_path, max_steps=4, human_timeout_s=1.0)
    run = run_dir(tmp_path)
    labels = run.root / "labels"
    with pytest.raises(RlhfkitError, match="0 of 4 prompts of refresh 0 answered"):
        train_online_dpo(cfg, run)
    # a checkpoint before the first refresh: the run, and the store inside it, are kept
    assert has_progress(run)
    answer_as_people(labels, lambda item_id: (0, 1, 2), 4).join()
    resumed = prepare_run_dir(run.root, resume=True, overwrite=False)
    with pytest.raises(RlhfkitError, match="0 of 4 prompts of refresh 1 answered"):
        train_online_dpo(cfg, resumed, resume=True)
    answer_as_people(labels, lambda item_id: (2, 1, 0), 8).join()
    resumed = prepare_run_dir(run.root, resume=True, overwrite=False)
    result = train_online_dpo(cfg, resumed, resume=True)
    # resumed at the checkpoint before refresh 1 (step 2); the same 8 items, none asked again
    assert len(result.history) == 2 and result.labels_used == 8 * 3
    assert len(LabelStore(labels / "labels.db").items()) == 8
    AutoModelForCausalLM.from_pretrained(resumed.final)


def test_micro_batch_size_zero_means_every_group_in_one_pass():
    # as for every policy trainer (PolicyRunConfig.micro_batch_size); the check used to refuse it
    check_online_config(OnlineDPOConfig(model="m", task="advice", micro_batch_size=0, max_steps=2))


def test_a_run_with_micro_batch_size_zero_trains_as_one_in_micro_batches(tiny_model_dir, tmp_path):
    # 0 = every group in one pass: the reference table too (it used to crash in range(.., 0))
    whole = train_online_dpo(
        config(tiny_model_dir, tmp_path, micro_batch_size=0, max_steps=2), run_dir(tmp_path, "a")
    )
    split = train_online_dpo(
        config(tiny_model_dir, tmp_path, micro_batch_size=3, max_steps=2), run_dir(tmp_path, "b")
    )
    losses = [[row["loss"] for row in run.history if "loss" in row] for run in (whole, split)]
    assert [len(run) for run in losses] == [2, 2]
    # step 1 only: step 2 samples from weights one update apart in the last bits, where a
    # near-tie can draw another token
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-5)


def test_the_missing_eos_penalty_is_refused_since_no_reward_trains(tiny_model_dir, tmp_path):
    from rlhfkit.train.online_dpo import check_online_config

    cfg = config(tiny_model_dir, tmp_path, missing_eos_penalty=0.5)
    with pytest.raises(ConfigError, match="missing_eos_penalty=0.5: online DPO learns from"):
        check_online_config(cfg)


def judged_own_prompts(model, tmp_path, **overrides) -> OnlineDPOConfig:
    """A run on a user's own prompt file, ranked by a judge (the tiny model): no reward, no task."""
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Q: what is {i} + 1?\nA:"}) + "\n" for i in range(8))
    )
    settings = dict(task=None, reward="", labeller="judge", judge_model=str(model))
    return config(model, tmp_path, train_data=str(prompts), **{**settings, **overrides})


def test_a_judge_ranks_a_users_own_prompts_with_no_reward_and_no_task(tiny_model_dir, tmp_path):
    # the judge's rankings train the policy: no reward is needed, none is logged, and with
    # nothing to score held-out answers with, the run does not evaluate
    cfg = judged_own_prompts(tiny_model_dir, tmp_path, max_steps=2)
    result = train_online_dpo(cfg, run_dir(tmp_path))
    assert len(result.history) == 2 and result.labels_used == 2 * 4  # one pair per prompt
    assert all(math.isfinite(row["loss"]) and "reward_mean" not in row for row in result.history)
    assert not any(key.startswith("eval_") for row in result.history for key in row)


def test_eval_data_with_nothing_to_score_it_is_refused(tiny_model_dir, tmp_path):
    cfg = judged_own_prompts(tiny_model_dir, tmp_path)
    cfg = dataclasses.replace(cfg, eval_data=cfg.train_data)
    with pytest.raises(ConfigError, match=r"^eval_data=.*: with neither reward= nor task="):
        train_online_dpo(cfg, run_dir(tmp_path))
