"""Where work runs and in which precision: the CPU behaviour everywhere, and the CUDA paths
(bf16 autocast, every trainer on the GPU, resume with CUDA RNG state) where a GPU is present.
CI has no GPU, so the CUDA tests are skipped there; run them on a GPU machine with
`pytest tests/runtime/test_device.py`."""

import logging
import random
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhfkit.errors import RlhfkitError
from rlhfkit.models.fused_layers import use_fastest_kernels
from rlhfkit.models.loading import load_causal_lm
from rlhfkit.models.short_attention import SHORT_EAGER
from rlhfkit.objectives.preference import DPOLoss
from rlhfkit.rollout.forward import response_logprobs
from rlhfkit.runtime import device as device_module
from rlhfkit.runtime.device import Precision, autocast, resolve_device
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.tasks.arith import ArithTask
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.grpo import GRPOConfig, train_grpo
from rlhfkit.train.ppo import PPOConfig, train_ppo
from rlhfkit.train.raft import RAFTConfig, train_raft
from rlhfkit.train.reward import RewardConfig, train_reward_model
from rlhfkit.train.sft import SFTConfig, train_sft
from tests.train.conftest import length_reward_spec
from tests.train.test_reward import gold_ranking, write_jsonl
from tests.train.test_sft import write_jsonl as write_examples

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
QUIET = dict(progress=False, tensorboard=False)


def test_auto_is_cuda_when_present_else_cpu():
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present")
def test_asking_for_cuda_without_one_is_a_one_line_error():
    with pytest.raises(RlhfkitError, match="no CUDA device is available"):
        resolve_device("cuda")


@pytest.mark.skipif(torch.accelerator.is_available(), reason="an accelerator is present")
@pytest.mark.parametrize("name, label", [("mps", "MPS"), ("xpu", "XPU"), ("meta", "meta")])
def test_asking_for_a_device_this_machine_lacks_is_a_one_line_error(name, label):
    # not torch's "not linked with support for mps devices" at the first .to(device)
    with pytest.raises(RlhfkitError, match=f"'{name}' was asked for, but no {label} device is"):
        resolve_device(name)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_a_cuda_index_past_the_devices_is_a_one_line_error():
    with pytest.raises(RlhfkitError, match=r"this machine has \d+ CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_fp32_is_no_autocast_and_bf16_casts_matmuls():
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu"), Precision.FP32):
        assert (x @ x).dtype == torch.float32
    with autocast(torch.device("cpu"), Precision.BF16):
        assert (x @ x).dtype == torch.bfloat16


def test_bf16_on_a_cpu_without_bf16_units_warns_that_it_is_emulated(monkeypatch, caplog):
    # through rlhfkit's logger, so the run's log.txt keeps it (not Python's warnings, printed
    # with a source line at each place that enters autocast); once, not at every forward
    device_module._warn_bf16_emulated.cache_clear()
    monkeypatch.setattr(device_module, "cpu_has_bf16_units", lambda: False)
    with caplog.at_level(logging.WARNING, logger="rlhfkit"):
        for _ in range(3):
            autocast(torch.device("cpu"), Precision.BF16)
    assert [(r.name, r.levelno) for r in caplog.records] == [
        ("rlhfkit.runtime.device", logging.WARNING)
    ]
    assert "emulated" in caplog.records[0].getMessage()
    device_module._warn_bf16_emulated.cache_clear()
    caplog.clear()
    monkeypatch.setattr(device_module, "cpu_has_bf16_units", lambda: True)
    with caplog.at_level(logging.WARNING, logger="rlhfkit"), warnings.catch_warnings():
        warnings.simplefilter("error")
        autocast(torch.device("cpu"), Precision.BF16)
        autocast(torch.device("cpu"), Precision.FP32)
    assert not caplog.records


def test_bf16_units_are_read_from_the_cpu_flags(monkeypatch, tmp_path):
    flags = "flags\t\t: fpu avx2 {}\n"
    for extra, want in (("", False), ("avx512_bf16", True), ("amx_bf16 amx_tile", True)):
        (tmp_path / "cpuinfo").write_text("processor : 0\n" + flags.format(extra))
        monkeypatch.setattr(device_module, "Path", lambda _: tmp_path / "cpuinfo")
        device_module.cpu_has_bf16_units.cache_clear()
        assert device_module.cpu_has_bf16_units() is want
    device_module.cpu_has_bf16_units.cache_clear()


def test_bf16_units_are_read_from_an_arm_cpus_features(monkeypatch, tmp_path):
    # aarch64's /proc/cpuinfo has no "flags" line: its extensions are listed as "Features"
    features = "processor\t: 0\nFeatures\t: fp asimd sve {}\nCPU implementer\t: 0x41\n"
    for extra, want in (("", False), ("svebf16 i8mm bf16", True)):
        (tmp_path / "cpuinfo").write_text(features.format(extra))
        monkeypatch.setattr(device_module, "Path", lambda _: tmp_path / "cpuinfo")
        device_module.cpu_has_bf16_units.cache_clear()
        assert device_module.cpu_has_bf16_units() is want
    device_module.cpu_has_bf16_units.cache_clear()


@pytest.mark.parametrize(
    "device, precision, kernel",
    [("cpu", "bf16", "eager"), ("cpu", "fp32", SHORT_EAGER), ("cuda", "bf16", "sdpa")],
)
def test_attention_kernels_by_device_and_precision(
    tiny_model_dir, tmp_path, device, precision, kernel
):
    model = load_causal_lm(tiny_model_dir)  # loaded with SDPA, transformers' default
    assert use_fastest_kernels(model, torch.device(device), precision) is model
    assert model.config._attn_implementation == kernel
    fused = "forward" in vars(model.model.norm)  # fuse_layers: on a CPU in fp32 only
    assert fused == (device == "cpu" and precision == "fp32")
    model.save_pretrained(tmp_path)  # the choice is not saved: a reload has the default
    assert load_causal_lm(tmp_path).config._attn_implementation == "sdpa"


def test_eager_and_sdpa_attention_agree_in_bf16(tiny_model_dir):
    # a padded batch, forward and backward under bf16 autocast: the kernels agree to bf16's
    # precision (they round in other places), so the switch changes speed, not results
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, mask = _prompt_batch(tokenizer, "cpu")
    results = {}
    for kernel in ("sdpa", "eager"):
        model = load_causal_lm(tiny_model_dir)
        model.set_attn_implementation(kernel)
        with autocast(torch.device("cpu"), Precision.BF16):
            logprobs = response_logprobs(model, ids, mask, 3).logprobs
        logprobs.sum().backward()
        results[kernel] = logprobs.detach(), model.model.embed_tokens.weight.grad
    (lp_sdpa, grad_sdpa), (lp_eager, grad_eager) = results["sdpa"], results["eager"]
    assert torch.allclose(lp_sdpa, lp_eager, atol=0.05)
    assert torch.allclose(grad_sdpa, grad_eager, atol=0.05 * float(grad_sdpa.abs().max()))


def test_trainers_train_in_bf16_on_the_cpu_with_eager_attention(
    tiny_model_dir, preference_data, tmp_path, monkeypatch
):
    kernels = []
    forward = torch.nn.Module.__call__

    def recording(module, *args, **kwargs):
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation") and module.training:
            kernels.append(config._attn_implementation)
        return forward(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", recording)
    common = dict(model=str(tiny_model_dir), max_steps=1, lr=1e-4, warmup_steps=0, eval_every=0)
    common.update(save_every=0, device="cpu", precision=Precision.BF16, **QUIET)
    sft = SFTConfig(**common, train_data=preference_data["sft"], batch_size=4)
    rm = RewardConfig(**common, train_data=preference_data["rankings"], batch_size=4)
    for train, cfg, name in ((train_sft, sft, "sft"), (train_reward_model, rm, "rm")):
        kernels.clear()
        train(cfg, prepare_run_dir(tmp_path / name, resume=False, overwrite=False))
        assert kernels and set(kernels) == {"eager"}, (name, set(kernels))


def _prompt_batch(tokenizer, device):
    texts = ["3 + 4 = ", "How do I sleep better?"]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@needs_cuda
def test_bf16_logprobs_on_cuda_match_fp32_on_cpu(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir).eval()
    ids, mask = _prompt_batch(tokenizer, "cpu")
    width = 3  # score the last three tokens as the "response"
    cpu = response_logprobs(model, ids, mask, width).logprobs
    gpu_model = model.to("cuda")
    with autocast(torch.device("cuda"), Precision.BF16):
        gpu = response_logprobs(gpu_model, ids.cuda(), mask.cuda(), width).logprobs
    assert gpu.dtype == torch.float32  # log-softmax is taken in float32 even under autocast
    assert torch.allclose(gpu.cpu(), cpu, atol=0.1)
    assert not torch.equal(gpu.cpu(), cpu)  # bf16 really ran: the result is not fp32's


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory):
    rng = random.Random(0)
    rows = [gold_ranking(p, rng) for p in AdviceTask().prompts(40, rng)]
    folder = tmp_path_factory.mktemp("cuda_data")
    sft = ArithTask(flawed_fraction=0.0).sft_examples(40, random.Random(1))
    return {
        "rankings": write_jsonl(folder / "rankings.jsonl", rows[:32]),
        "heldout": write_jsonl(folder / "heldout.jsonl", rows[32:]),
        "sft": write_examples(folder / "sft.jsonl", sft[:32]),
        "sft_eval": write_examples(folder / "sft_eval.jsonl", sft[32:]),
    }


def _policy_settings(tmp_path) -> dict:
    return dict(
        reward=length_reward_spec(tmp_path),
        train_prompts=32,
        eval_prompts=4,
        max_new_tokens=8,
        eval_max_new_tokens=6,
        max_steps=2,
        lr=1e-3,
        warmup_steps=1,
        eval_every=0,
        save_every=0,
        device="cuda",
        precision=Precision.BF16,
        **QUIET,
    )


def _trainers(model: str, data: dict, tmp_path) -> dict:
    """Each trainer with a 2-step bf16 CUDA config; the value trains and returns the run's final
    dir."""
    policy = _policy_settings(tmp_path)
    common = dict(
        model=model,
        max_steps=2,
        lr=1e-3,
        warmup_steps=1,
        save_every=0,
        device="cuda",
        precision=Precision.BF16,
        **QUIET,
    )
    return {
        "sft": (
            train_sft,
            SFTConfig(
                train_data=data["sft"],
                eval_data=data["sft_eval"],
                batch_size=8,
                eval_every=0,
                sample_every=0,
                **common,
            ),
        ),
        "reward": (
            train_reward_model,
            RewardConfig(
                train_data=data["rankings"],
                eval_data=data["heldout"],
                batch_size=8,
                eval_every=0,
                num_heads=2,
                **common,
            ),
        ),
        "dpo": (
            train_dpo,
            DPOConfig(
                train_data=data["rankings"],
                eval_data=data["heldout"],
                batch_size=8,
                eval_every=0,
                loss=DPOLoss.PLACKETT_LUCE,
                **common,
            ),
        ),
        "grpo": (
            train_grpo,
            GRPOConfig(
                model=model,
                task="arith",
                prompts_per_step=4,
                group_size=4,
                mini_batch_size=8,
                beta=0.04,
                **policy,
            ),
        ),
        "ppo": (
            train_ppo,
            PPOConfig(
                model=model,
                task="advice",
                critic_init="policy",
                prompts_per_step=8,
                mini_batch_size=8,
                ppo_epochs=1,
                **policy,
            ),
        ),
        "raft": (
            train_raft,
            RAFTConfig(
                model=model,
                task="arith",
                prompts_per_round=4,
                samples_per_prompt=4,
                mini_batch_size=8,
                require_correct=False,
                **policy,
            ),
        ),
    }


@needs_cuda
@pytest.mark.parametrize("name", ["sft", "reward", "dpo", "grpo", "ppo", "raft"])
def test_every_trainer_runs_in_bf16_on_cuda_and_saves_fp32_weights(
    name, tiny_model_dir, preference_data, tmp_path
):
    train, cfg = _trainers(str(tiny_model_dir), preference_data, tmp_path)[name]
    before = load_file(tiny_model_dir / "model.safetensors")
    run = prepare_run_dir(tmp_path / name, resume=False, overwrite=False)
    train(cfg, run)
    after = load_file(run.final / "model.safetensors")
    # master weights stay float32 under autocast, and they moved
    shared = [k for k in before if k in after]
    assert shared and all(after[k].dtype == torch.float32 for k in shared)
    assert any(not torch.equal(before[k], after[k]) for k in shared)
    assert all(torch.isfinite(after[k]).all() for k in after)


@needs_cuda
def test_grpo_resumed_on_cuda_continues_the_same_run(tiny_model_dir, tmp_path):
    """The CUDA generator and RNG states go into checkpoints: a run resumed from step 2 samples
    the same rollouts as one that went straight through, so it ends with the same weights."""
    cfg = GRPOConfig(
        model=str(tiny_model_dir),
        task="arith",
        prompts_per_step=4,
        group_size=4,
        mini_batch_size=8,
        beta=0.04,
        **{
            **_policy_settings(tmp_path),
            "max_steps": 4,
            "save_every": 2,
            "precision": Precision.FP32,
        },
    )
    straight = prepare_run_dir(tmp_path / "straight", resume=False, overwrite=False)
    train_grpo(cfg, straight)
    shutil.copytree(straight.root, tmp_path / "resumed")
    resumed = prepare_run_dir(tmp_path / "resumed", resume=True, overwrite=False)
    shutil.rmtree(resumed.final)
    for later in (p for p in resumed.checkpoints.glob("step_*") if p.name != "step_00000002"):
        shutil.rmtree(later)
    result = train_grpo(cfg, resumed, resume=True)
    assert [row for row in result.history] and len(result.history) == 2  # steps 3 and 4 only
    a, b = (
        load_file(straight.final / "model.safetensors"),
        load_file(resumed.final / "model.safetensors"),
    )
    # CUDA kernels may reduce in another order between runs: equal to float32 rounding
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    AutoModelForCausalLM.from_pretrained(resumed.final)
