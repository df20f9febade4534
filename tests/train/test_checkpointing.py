import errno

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.errors import ConfigError, NumericalFault
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.runtime.checkpoint import save_checkpoint
from rlhfkit.train.checkpointing import resume_point, save_final_model, save_trainer_checkpoint


def test_the_final_model_is_written_whole(tiny_model_dir, tmp_path):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    final = save_final_model(model, tokenizer, tmp_path / "run" / "final", tmp_path / "none")
    saved = load_file(final / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items() if k in saved)
    assert [p.name for p in final.parent.iterdir()] == ["final"]  # no temporary left
    # a crash during a save of final/ left copies beside it: the next save clears them
    for leftover in (".tmp-final-0123456789ab", ".tmp-old-final-77"):
        (final.parent / leftover).mkdir()
        (final.parent / leftover / "model.safetensors").write_bytes(b"half a model")
    (final.parent / ".tmp-finalist-1").mkdir()  # another name's: not its business
    save_final_model(model, tokenizer, final, tmp_path / "none")
    assert sorted(p.name for p in final.parent.iterdir()) == [".tmp-finalist-1", "final"]


def test_a_checkpoint_past_the_runs_steps_is_refused_not_saved_as_final(tmp_path):
    # `--resume-with-changes max_steps=10` on a run checkpointed at step 15: the loop would not
    # run, and step 15's weights would become final/ of a 10-step run
    checkpoints = tmp_path / "checkpoints"
    save_checkpoint(checkpoints, 15, write=lambda d: (d / "w").write_bytes(b"w"))
    assert resume_point(checkpoints, total_steps=15).name == "step_00000015"
    with pytest.raises(ConfigError, match="is step 15, past this run's 10 steps: resume with"):
        resume_point(checkpoints, total_steps=10)


def test_a_full_disk_during_the_final_save_leaves_the_earlier_final_untouched(
    tiny_model_dir, tmp_path, monkeypatch
):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "earlier.txt").write_text("the earlier final model")

    def full_disk(directory, *args, **kwargs):
        (directory / "config.json").write_text("{}")  # the first files fit, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_pretrained", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_final_model(model, tokenizer, final, tmp_path / "none")
    assert [p.name for p in final.iterdir()] == ["earlier.txt"]
    assert [p.name for p in final.parent.iterdir()] == ["final"]


def test_a_model_with_a_non_finite_weight_is_never_saved(tiny_model_dir, tmp_path):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")
    with pytest.raises(NumericalFault, match="non-finite weights: final/ not written"):
        save_final_model(model, tokenizer, tmp_path / "run" / "final", tmp_path / "none")
    assert not (tmp_path / "run" / "final").exists()


def test_a_checkpoint_with_a_non_finite_weight_is_never_written(tiny_model_dir, tmp_path):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters())
    save = dict(model=model, tokenizer=tokenizer, optimizer=optimizer, extra={}, keep_last=3)
    checkpoints = tmp_path / "checkpoints"
    save_trainer_checkpoint(checkpoints, step=2, **save)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(NumericalFault, match="step 3: .* checkpoint not written.*step_00000002"):
        save_trainer_checkpoint(checkpoints, step=3, **save)
    assert [p.name for p in checkpoints.iterdir()] == ["step_00000002"]


def test_a_lora_checkpoint_on_an_untied_head_holds_the_adapters_alone(tmp_path):
    """peft writes a targeted output head's whole base weight beside its adapters unless told
    not to (with a warning on every save): a checkpoint is the adapters, and loads back."""
    import warnings

    from safetensors import safe_open

    from rlhfkit.models.lora import add_lora, load_lora
    from tests.models.test_lora import untied_llama

    untied_llama(tmp_path / "base")
    model = add_lora(load_causal_lm(tmp_path / "base"), r=2, alpha=4, target_modules=["lm_head"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*save_embedding_layers")
        saved = save_trainer_checkpoint(
            tmp_path / "checkpoints",
            step=1,
            model=model,
            tokenizer=load_tokenizer_stub(),
            optimizer=optimizer,
            extra={},
            keep_last=1,
        )
    with safe_open(saved / "model" / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys), keys
    loaded = load_lora(load_causal_lm(tmp_path / "base"), saved / "model")
    assert {n for n, _ in loaded.named_parameters() if "lora_A" in n}


def load_tokenizer_stub():
    class _Tokenizer:
        def save_pretrained(self, directory):
            pass

    return _Tokenizer()
