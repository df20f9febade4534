"""The settings every policy-optimisation trainer shares (the policy, its prompts, the reward,
optimisation, evaluation, checkpoints), in one place.

Every default is written once. The few settings whose default depends on the trainer (the
run's length, the learning rate, the response length, the evaluation and checkpoint cadence)
are declared here without a default, and each trainer's config gives its own value once:
`GroupRolloutConfig` for GRPO and RLOO, `PPOConfig`, `RAFTConfig` and `OnlineDPOConfig`.
"""

from dataclasses import dataclass

from rlhfkit.errors import ConfigError
from rlhfkit.runtime.device import Precision
from rlhfkit.runtime.distributed import FrozenModels
from rlhfkit.runtime.run_config import RunConfig
from rlhfkit.tasks.registry import TaskName


@dataclass(frozen=True, kw_only=True)
class PolicyRunConfig(RunConfig):
    model: str = ""
    """Causal-LM directory of the starting policy (usually the SFT model); also the frozen
    reference."""
    reference_model: str = ""
    """Another causal-LM directory as the frozen reference (e.g. the SFT model when `model` is a
    later policy); empty = `model` itself. Not with LoRA, whose reference is its own base."""
    task: TaskName | None = None
    """A built-in task (`rlhfkit tasks` lists them), or none (null) to train on your own data. A
    named task gives the prompts (unless `train_data` is given), the reward `task`, the gold score
    of every step's samples and the evaluation; without one, `train_data` and `reward` are
    required."""
    train_data: str = ""
    """Prompt-only data (prompt, optional answer and metadata); empty = the task's generator."""
    train_prompts: int = 2000
    """Prompts drawn from the task's generator when `train_data` is empty."""
    shuffle: bool = True
    """Seeded order of the training prompts; false = file order (step k takes rows
    k*P ... (k+1)*P - 1)."""
    eval_data: str = ""
    """Held-out prompts for evaluation; empty = drawn from the task's generator (without a task:
    none)."""
    eval_prompts: int = 200
    """Held-out prompts drawn from the task's generator when `eval_data` is empty."""
    reward: str = ""
    """Reward source: task, process, model:PATH, file.py:function, or a weighted sum
    '0.5*task + 0.5*model:PATH'; empty = `task`, the named task's verifier (PPO:
    model:<reward_model>)."""
    reward_max_length: int = 256
    """Tokens a reward model reads per response (as in its training)."""
    reward_uncertainty_coef: float = 0.0
    """Reward = ensemble mean - coef * ensemble std (a reward-model ensemble only)."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the reward of every response cut at `max_new_tokens` before its stop
    token (TRL's missing_eos_penalty): a reward model reads a cut response as if it had ended,
    and this makes running on cost something. 0 = none; outcome rewards only."""
    reward_timeout_s: float = 60.0
    """Longest one call of a user reward function may take (0 = no limit)."""
    reward_first_call_timeout_s: float = 600.0
    """The limit of a user reward function's calls until one has returned, when longer than
    `reward_timeout_s`: a function that loads a model or a judge on its first call (0 = no
    limit on that call)."""
    max_new_tokens: int
    """Response length limit."""
    temperature: float = 1.0
    """Sampling temperature (the log-probs in the loss use the same)."""
    max_steps: int
    """Rollout steps (RAFT: rounds)."""
    lr: float
    """Peak learning rate (AdamW), constant after warm-up."""
    warmup_steps: int = 5
    """Linear warm-up (rollout steps)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (0 = none)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward instead of keeping them: less
    memory for about a third more compute (prompts shared by a group then run per row)."""
    disable_dropout: bool = True
    """Dropout off in the policy (and PPO's critic), as the losses assume: their ratios and KL
    compare it with log-probs taken without dropout. false = the model's own rates."""
    micro_batch_size: int = 0
    """Rows per forward/backward pass inside a mini-batch (PPO: prompts; RAFT: samples); their
    gradients add up to the mini-batch's one update, equal to the unsplit one. 0 = the whole
    mini-batch in one pass; lower it when a mini-batch does not fit in memory."""
    lora_r: int = 0
    """LoRA rank (0 = full fine-tuning). With LoRA the reference is the base with adapters off."""
    lora_alpha: int = 16
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input (peft's lora_dropout). `disable_dropout` turns it off with
    the rest of the policy's dropout, so it is refused with it: set disable_dropout=false to train
    with it."""
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    """The layers that get adapters: all-linear (every linear layer but the output head), or
    their names, e.g. [q_proj, v_proj] (peft's list: the end of each layer's dotted name)."""
    eval_every: int
    """Greedy evaluation on the held-out prompts every this many steps, and at the start and the
    end (0 = only at the start and end; -1 = never). With a task, its own metrics (accuracy,
    gold score, ...); without one, the mean `reward` of the answers to `eval_data`
    (eval_reward_mean); with neither a task nor eval_data, no evaluation."""
    eval_max_new_tokens: int
    """Length limit at evaluation."""
    save_every: int
    """Checkpoint every this many steps (0 = only the final model)."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    precision: Precision = Precision.FP32
    """fp32, or bf16: autocast for the forward passes, and sampling (the rollouts and the
    held-out evaluation) with bf16 weights and cache (the draws and their log-probs in float32);
    weights and optimizer state stay float32."""
    frozen_models: FrozenModels = FrozenModels.REPLICATED
    """Under torchrun, the reference and the reward models of `reward`: replicated (whole on
    every rank) or sharded like the policy (1/N of their weights on each rank between their
    passes, gathered whole around them). In a single process this changes nothing."""
    compile_sampling: bool = False
    """Compile the one-token decoding step (`torch.compile`; Llama-layer models: Llama,
    Mistral and Qwen2, plain LoRA included; others decode uncompiled): faster
    sampling for a one-off compile per run (tens of seconds on a CPU, reused by later runs
    through the compile cache), worth it for long runs."""
    cuda_graphs: bool = True
    """On CUDA, replay the one-token decoding steps from CUDA graphs (Llama-layer models;
    `rollout.decode_graphs`): captured once per run for each batch size the rows pass
    through. No effect on a CPU."""
    tensorboard: bool = True
    """Also write TensorBoard scalars."""
    progress: bool = True
    """Show a progress bar."""


@dataclass(frozen=True)
class GroupRolloutConfig(PolicyRunConfig):
    """The settings of the critic-free trainers that sample a group of responses per prompt
    (GRPO, RLOO): the rollout's shape, its mini-batches, the sampling filters, the KL clamp."""

    prompts_per_step: int = 16
    """Prompts per rollout; the rollout holds prompts_per_step * group_size responses."""
    group_size: int = 8
    """G: responses sampled per prompt (at least 2: the baseline comes from the others)."""
    mini_batch_size: int = 64
    """Responses per optimizer step; must divide prompts_per_step * group_size."""
    mu: int = 1
    """Passes over each rollout (inner iterations); 1 = strictly on-policy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    kl_clamp: float = 0.0
    """Clamp each token's KL estimate to [-kl_clamp, kl_clamp] (OpenRLHF and veRL use 10); 0 = no
    clamp."""
    # the defaults PolicyRunConfig leaves to each trainer (see its fields)
    max_new_tokens: int = 48
    max_steps: int = 100
    lr: float = 1e-4
    eval_every: int = 25
    eval_max_new_tokens: int = 48
    save_every: int = 25


def check_reference_model(cfg: PolicyRunConfig, loads_reference: bool) -> None:
    """Refuse `reference_model` where no reference would be read from it: under LoRA (the
    reference is the base with its adapters off), and in a run that loads no reference
    (`loads_reference` False: RAFT, GRPO and RLOO with beta=0, online DPO with
    refresh_reference=true). Each trainer's registered check calls it, so a job refuses it
    before its first stage and `--print-config` refuses it too."""
    if not cfg.reference_model:
        return
    if cfg.lora_r > 0:
        raise ConfigError(
            f"reference_model={cfg.reference_model} with lora_r={cfg.lora_r}: under LoRA the "
            "reference is the base model with its adapters off; leave reference_model empty"
        )
    if not loads_reference:
        raise ConfigError(
            f"reference_model={cfg.reference_model}: this run loads no reference model (RAFT "
            "never does, GRPO and RLOO with beta=0 and online DPO with refresh_reference=true "
            "neither); leave reference_model empty"
        )
