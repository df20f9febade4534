"""Online and iterative DPO: preferences over the current policy's own samples, labelled while
training, under a labelling budget (seed 000, "Online/offline learning"; Guo et al. 2024,
"Direct language model alignment from online AI feedback"; Xiong et al. 2024, iterative DPO).

Each refresh samples K responses per prompt from the current policy, has a labeller rank them
(the task's simulated human, a reward model, an AI judge or people; `feedback.labellers`), and
trains on the ranked groups with the DPO losses of `train.dpo` (K = 2: pairwise DPO; K > 2:
Plackett-Luce over the whole ranking, or its C(K,2) pairs with sigmoid / ipo; the log-probs are
the policy's own, T = 1, whatever `temperature` the samples were drawn at):
    online:     a refresh every step: every batch is fresh samples, labelled (batch-wise online);
    iterative:  a refresh every T steps labels the prompts of the next T batches at once, and
                the policy trains on them for T steps (its samples grow stale in between);
    hybrid:     online (or, with T > 1, iterative) plus a share of every batch from an offline
                preference file.
A ranking of K costs C(K,2) labels; the run stops when `label_budget` cannot pay for another
batch, so offline runs compare at the same count (`rlhfkit dpo max_labels=...`).
The reference is the starting policy (a frozen copy, or the base under LoRA), or with
`refresh_reference` the policy as it was at each refresh (seed 003, Q16: iterative training
sets the reference to the current policy). Reference log-probs are computed once per refresh.
Every step logs the loss, the implicit-reward margin and preference accuracy over its labelled
pairs, the labels used so far, the reward (and, with a task, the gold score) of its online
samples, and their KL to the reference (kl_per_sequence, kl_per_token).
Departures: prompts are drawn as in the other RL trainers (the task's generator or a prompt
file), a hybrid batch keeps its offline share also in a last, smaller online batch, and the
offline rows are not re-labelled. People (labeller=human) may tie responses (equal ranks) and
skip a prompt: a skipped prompt is dropped and the refresh's ranked prompts are spread over its
steps; each refresh they label starts with a checkpoint, so a resumed run samples the same
responses and finds their answers in the label store.
Under torchrun each rank samples its contiguous share of a refresh's prompts (the shared
sampling noise of `policy_run`); the samples are gathered, rank 0 has them ranked and sends the
rankings to every rank, and every rank assembles the same pool. Each rank then backpropagates
its contiguous share of every step's groups, over all the step's groups, so each update is the
one-process update. Refused there: labeller=human (people answer one process), and
labeller=reward with frozen_models=sharded (rank 0 alone ranks, a sharded model needs every rank).
"""

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from rlhfkit.data.ranking_batch import RankedGroup, first_groups_within, group_labels
from rlhfkit.errors import ConfigError
from rlhfkit.feedback.labellers import LabellerKind, build_labeller, in_use, rank_with_ties
from rlhfkit.labelling.human import HumanSettings
from rlhfkit.objectives.kl import KLEstimator, kl_penalty
from rlhfkit.runtime.distributed import (
    FrozenModels,
    broadcast_from_main,
    current_ranks,
    gather_objects,
    one_reduction,
    rank_shares,
    refuse_unsupported,
)
from rlhfkit.train.dpo import load_preference_groups
from rlhfkit.train.dpo_losses import (
    Reference,
    backward_groups,
    batch_loss_fn,
    make_batch,
    reduced_gradients,
    zero_weight,
)
from rlhfkit.train.online_dpo_config import (  # noqa: F401 (the config is imported from here)
    OnlineDPOConfig,
    Regime,
    batch_shares,
    check_online_config,
    needs_reward,
    run_plan,
)
from rlhfkit.train.online_pool import (
    Pool,
    StepGroups,
    assemble_pool,
    group_from_ranks,
    pool_from_state,
    pool_state,
    rollout_examples,
    spread_ranked,
)
from rlhfkit.train.phase_timer import PhaseTimer
from rlhfkit.train.policy_run import PolicyRun
from rlhfkit.train.result import TrainResult
from rlhfkit.train.schedule import is_due


@dataclass
class OnlineDPOResult(TrainResult):
    labels_used: int = 0  # comparisons the labeller made
    offline_labels: int = 0  # comparisons in the offline rows a hybrid run could draw from


def _step_loss(
    cfg: OnlineDPOConfig, run: PolicyRun, batch: StepGroups, loss_fn
) -> tuple[dict, torch.Tensor]:
    """DPO loss over the step's groups (summed over micro-batches / all groups), backpropagated;
    returns the loss, implicit-reward metrics and the sequence log-probs of every response.
    Under torchrun each rank runs its contiguous share of the groups (a rank without any runs
    one at zero weight), the gradients reduced once; the results are over every rank's."""
    share = rank_shares([list(range(len(batch.groups)))], run.ranks)[0]
    size, device = cfg.micro_batch_size or len(share.rows), run.models.device
    pad_token_id = run.models.tokenizer.pad_token_id
    parts = [share.rows[start : start + size] for start in range(0, len(share.rows), size)]
    micro_batches = (
        (
            make_batch([batch.groups[i] for i in rows], pad_token_id, device),
            torch.cat([batch.ref_logprobs[i] for i in rows]).to(device),
        )
        for rows in parts
    )
    with one_reduction(run.models.policy):
        step_grads = backward_groups(
            run.models.policy,
            micro_batches,
            zero_weight(loss_fn) if share.stand_in else loss_fn,
            num_groups=len(batch.groups),
            beta=cfg.beta,
            precision=cfg.precision,
        )
    loss, _, metrics = reduced_gradients(step_grads, share.stand_in, run.ranks)
    logprobs = step_grads.logprobs[: 0 if share.stand_in else None]
    return {"loss": loss, **metrics}, run.all_rows(logprobs)  # every rank's, in group order


def _every_rank(values: list, run: PolicyRun) -> list:
    """Every rank's `values`, one list in rank order (the step's order); one process: these."""
    return [value for part in gather_objects(values, run.ranks) for value in part]


def human_settings(cfg: OnlineDPOConfig, run_dir) -> HumanSettings:
    """labeller=human: the store (by default inside the run directory) and the waiting rules."""
    store = Path(cfg.human_store) if cfg.human_store else run_dir.root / "labels" / "labels.db"
    return HumanSettings(
        store=store,
        run_tag=run_dir.root.name,
        timeout_s=cfg.human_timeout_s,
        serve=cfg.human_serve,
        port=cfg.human_port,
        hold_s=cfg.human_hold_minutes * 60,
    )


def _offline_groups(cfg: OnlineDPOConfig, tokenizer) -> list[RankedGroup]:
    """hybrid: the offline rows within `offline_max_labels`; none in the other regimes."""
    if not cfg.offline_data:
        return []
    groups = load_preference_groups(
        cfg.offline_data, tokenizer, max_length=cfg.max_length, truncation=cfg.truncation
    )
    kept = first_groups_within(groups, cfg.offline_max_labels)
    if not kept:
        raise ConfigError(
            f"offline_max_labels={cfg.offline_max_labels} buys no row of {cfg.offline_data}: "
            "its first row alone holds more comparisons"
        )
    return kept


def _step_row(
    batch: StepGroups,
    stats: dict,
    logprobs: torch.Tensor,
    samples_per_prompt: int,
    labels_used: int,
    timer: PhaseTimer,
) -> dict:
    """The step's metrics; KL(pi || pi_ref) is k1 on its online samples (drawn at the last
    refresh, so slightly off-policy between refreshes): k1 of the sequence log-probs is the sum
    of the tokens' k1, per sequence, and over the samples' tokens, per token."""
    ref_online = torch.cat(batch.ref_logprobs[: batch.online]).to(logprobs.device)
    kl = kl_penalty(logprobs[: batch.online * samples_per_prompt], ref_online, KLEstimator.K1)
    row = {
        **stats,
        **batch.samples,
        "kl_per_sequence": kl.mean().item(),
        "kl_per_token": kl.sum().item() / max(1.0, batch.samples["response_tokens"]),
        "labels_used": labels_used,
        "online_groups": batch.online,
        "offline_groups": len(batch.groups) - batch.online,
        "step_seconds": sum(timer.seconds.values()),
    }
    row.update({f"time_{phase}": seconds for phase, seconds in timer.seconds.items()})
    return row


def _trainer_state(labeller, pool: Pool | None, done: int) -> dict:
    """What a checkpoint after `done` steps keeps besides the models: the labeller's state, and
    the pool while it still has steps to serve (a resumed run trains on the same samples)."""
    pool_data = pool_state(pool) if pool is not None and pool.covers(done) else None
    return {"labeller": labeller.state_dict(), "pool": pool_data}


def _checkpoint_before_people(cfg: OnlineDPOConfig, run: PolicyRun, step: int, total: int) -> bool:
    """labeller=human: whether the refresh at `step` first writes a checkpoint. People's answers
    outlive the run in their store; a checkpoint taken before sampling lets a resumed run draw
    the same samples and find the answers there (and a first refresh that times out leaves a run
    to resume). Not when the step has one: the one resumed from, or the one `end_step` wrote."""
    if LabellerKind(cfg.labeller) is not LabellerKind.HUMAN:
        return False
    resumed_here = step == run.start_step and bool(run.trainer_state)
    saved_after_last_step = step > run.start_step and is_due(
        step, cfg.save_every, total, at_end=False
    )
    return not (resumed_here or saved_after_last_step)


def train_online_dpo(cfg: OnlineDPOConfig, run_dir, *, resume: bool = False) -> OnlineDPOResult:
    """Optimise `cfg.model` by online, iterative or hybrid DPO; the final model goes to
    `run_dir.final`."""
    check_online_config(cfg)
    kind, sharded = LabellerKind(cfg.labeller), cfg.frozen_models == FrozenModels.SHARDED
    refuse_unsupported(
        current_ranks(),
        {
            "labeller=human": kind is LabellerKind.HUMAN,
            "labeller=reward with frozen_models=sharded": kind is LabellerKind.REWARD and sharded,
        },
    )
    plan, (_, offline_per_step) = run_plan(cfg), batch_shares(cfg)
    k, every = cfg.samples_per_prompt, cfg.refresh_every
    # step 1. policy, reference (none to load when it follows the policy), prompts, labeller;
    # on resume the labeller's state and the pool of labelled samples still to train on
    run = PolicyRun(
        cfg,
        run_dir,
        resume=resume,
        needs_reference=not cfg.refresh_reference,
        stage="online_dpo",
        total_steps=len(plan),
        needs_reward=needs_reward(cfg),
    )
    models = run.models
    reference = (
        Reference(models.reference, adapters_off=False)
        if models.reference is not None
        else Reference(models.policy, adapters_off=not cfg.refresh_reference)
    )
    labeller = build_labeller(
        cfg.labeller,
        task=run.task,
        reward=run.reward,
        seed=cfg.seed,
        annotator_temperature=cfg.annotator_temperature,
        target_agreement=cfg.target_agreement,
        judge_model=cfg.judge_model,
        device=models.device,
        human=human_settings(cfg, run_dir),
    )
    offline = _offline_groups(cfg, models.tokenizer)
    pool: Pool | None = None
    if run.trainer_state:
        labeller.load_state_dict(run.trainer_state["labeller"])
        pool = pool_from_state(run.trainer_state["pool"]) if run.trainer_state["pool"] else None
    loss_fn = batch_loss_fn(cfg.loss, beta=cfg.beta, label_smoothing=cfg.label_smoothing)
    result = OnlineDPOResult(model_dir=run_dir.final, offline_labels=group_labels(offline))

    with run, in_use(labeller):
        run.begin(result)  # the starting policy's evaluation, the baseline of the run
        for step in range(run.start_step, len(plan)):
            timer = PhaseTimer()
            if pool is None or not pool.covers(step):
                if _checkpoint_before_people(cfg, run, step, len(plan)):
                    run.save_checkpoint(step, _trainer_state(labeller, pool, step))
                # step 2. a refresh: K samples per prompt of the next T batches, from the current
                # policy
                steps = plan[step : step - step % every + every]
                prompts = [
                    p for s, count in enumerate(steps, step) for p in run.prompts_for_step(s, count)
                ]
                # (under torchrun: this rank's share, then every rank's samples gathered)
                with timer("generation"):
                    share = run.rank_share(prompts)
                    rollout, own_texts = run.sample(
                        share, k, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature
                    )
                    texts = _every_rank(own_texts, run)
                    grouped = [texts[i * k : (i + 1) * k] for i in range(len(prompts))]

                # step 3. the labeller ranks each prompt's K responses (C(K,2) labels each; people
                # may tie responses or skip a prompt, which is then dropped); scores for metrics.
                # Under torchrun rank 0's labeller ranks them all, for every rank
                with timer("labelling"):
                    rankings = broadcast_from_main(
                        rank_with_ties(labeller, prompts, grouped) if run.ranks.is_main else None,
                        run.ranks,
                    )
                with timer("reward"):
                    flat_prompts = [p for p in prompts for _ in range(k)]
                    gold = (
                        [run.task.reward(p, r) for p, r in zip(flat_prompts, texts)]
                        if run.task is not None
                        else None
                    )
                    own_prompts = [p for p in share.prompts for _ in range(k)]
                    rewards = (
                        _every_rank(
                            run.score(
                                own_prompts, own_texts, share.first_sample(k)
                            ).rewards.tolist(),
                            run,
                        )
                        if run.reward is not None
                        else None
                    )

                # step 4. ranked groups per step (a skipped prompt has no preference: dropped),
                # offline rows added, reference log-probs once
                with timer("reference"):
                    kept, counts = spread_ranked(rankings, steps)
                    rows = [i * k + j for i in kept for j in range(k)]
                    examples = _every_rank(rollout_examples(rollout), run)
                    pool = assemble_pool(
                        start=step,
                        plan=counts,
                        samples_per_prompt=k,
                        online_groups=[
                            group_from_ranks(examples[i * k : (i + 1) * k], rankings[i])
                            for i in kept
                        ],
                        gold=[gold[row] for row in rows] if gold is not None else None,
                        rewards=[rewards[row] for row in rows] if rewards is not None else None,
                        offline=offline,
                        offline_per_step=offline_per_step,
                        seed=cfg.seed,
                        reference=reference,
                        pad_token_id=models.tokenizer.pad_token_id,
                        batch_size=cfg.micro_batch_size,
                        device=models.device,
                        precision=cfg.precision,
                    )

            # step 5. the DPO loss of this step's groups, then one clipped update
            batch = pool.at(step)
            with timer("update"):
                stats, logprobs = _step_loss(cfg, run, batch, loss_fn)
                stats["grad_norm"] = run.optimizer_step(step, stats["loss"])

            # step 6. metrics, evaluation, checkpoint (with the labeller's state and the pool)
            row = _step_row(batch, stats, logprobs, k, labeller.labels_used, timer)
            done = step + 1
            run.end_step(done, row, result, state=partial(_trainer_state, labeller, pool, done))

    # step 7. the final policy, loadable with AutoModelForCausalLM.from_pretrained
    run.save_final()
    result.labels_used = labeller.labels_used
    return result
