import copy
import json
import shutil
import warnings

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import load_causal_lm
from rlhfkit.models.lora import add_backbone_lora, add_lora, load_lora, merged_gathered
from rlhfkit.models.reward import RewardModel


def test_adding_and_loading_adapters_raise_no_warning_a_user_cannot_act_on(
    tiny_model_dir, tmp_path
):
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", FutureWarning
        )  # peft reads an attribute transformers renamed
        model = add_lora(load_causal_lm(tiny_model_dir), r=4, alpha=8)
        model.save_pretrained(tmp_path / "adapters")
        loaded = load_lora(load_causal_lm(tiny_model_dir), tmp_path / "adapters")
    assert any(p.requires_grad for p in loaded.parameters())


def test_saved_adapters_name_their_base_by_an_absolute_path(tiny_model_dir, tmp_path, monkeypatch):
    shutil.copytree(tiny_model_dir, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    add_lora(load_causal_lm("base"), r=4, alpha=8).save_pretrained(tmp_path / "adapters")
    config = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
    # loadable with AutoPeftModelForCausalLM from any working directory
    assert config["base_model_name_or_path"] == str(tmp_path / "base")


def test_reward_model_adapters_cover_gpt2s_conv1d_layers_and_save_merged(tmp_path):
    """GPT-2's linear layers are `Conv1D`, not `nn.Linear`: the adapters must find them (a
    backbone with none was a peft traceback), and the merged classifier must score as the
    adapted model does."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "base")
    model = RewardModel.from_pretrained(tmp_path / "base")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # peft setting fan_in_fan_out itself warns per layer
        add_backbone_lora(model, r=4, alpha=8)
    trained = {n.split(".")[-4] for n, p in model.named_parameters() if "lora_A" in n}
    assert trained == {"c_attn", "c_proj", "c_fc"}
    assert [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n] == [
        "model.score.weight"
    ]
    for name, param in model.named_parameters():  # adapters that act (peft starts B at 0)
        if "lora_B" in name:
            torch.nn.init.normal_(param)
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        adapted = model.eval()(ids, mask).rewards
        model.save_pretrained(tmp_path / "merged")
        merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
        assert torch.allclose(merged(input_ids=ids).logits, adapted, atol=1e-5)


def test_reward_model_adapters_leave_an_untied_imitation_head_frozen(tiny_model_dir, tmp_path):
    """Under LoRA the imitation term's LM head is the base model's: with untied embeddings it is
    a projection of its own (vocabulary x hidden), which must not train as the adapters do."""
    untied = AutoModelForCausalLM.from_pretrained(tiny_model_dir, tie_word_embeddings=False)
    untied.save_pretrained(tmp_path / "untied")
    model = RewardModel.from_pretrained(tmp_path / "untied", with_lm_head=True)
    assert model.lm_head.weight.requires_grad  # trained with the whole model without LoRA
    add_backbone_lora(model, r=4, alpha=8)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n or n == "model.score.weight" for n in trained)


def test_adapters_go_on_the_named_layers_only_with_their_dropout(tiny_model_dir):
    model = add_lora(
        load_causal_lm(tiny_model_dir),
        r=4,
        alpha=8,
        dropout=0.1,
        target_modules=["q_proj", "v_proj"],
    )
    adapted = {n.split(".")[-4] for n, p in model.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "v_proj"}
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0}
    assert rates == {0.1}
    # one name as a string is that layer, not a pattern that must match a whole dotted name
    one = add_lora(load_causal_lm(tiny_model_dir), r=4, alpha=8, target_modules="self_attn.o_proj")
    assert {n.split(".")[-4] for n, p in one.named_parameters() if "lora_A" in n} == {"o_proj"}


@pytest.mark.parametrize("target", ["qproj", "input_layernorm", "all-linear"])
def test_a_name_that_is_no_adaptable_layer_is_refused_naming_the_layers(tiny_model_dir, target):
    """An unknown name, a norm or all-linear among names: one line naming the layers there are
    (the output head, tied to the embeddings here, not among them)."""
    assert load_causal_lm(tiny_model_dir).config.tie_word_embeddings
    names = ["q_proj", target] if target == "all-linear" else [target]
    with pytest.raises(ConfigError) as error:
        add_lora(load_causal_lm(tiny_model_dir), r=4, alpha=8, target_modules=names)
    message = str(error.value)
    assert message.startswith(f"lora_target_modules: '{target}' is not a linear layer")
    assert "q_proj" in message and "lm_head" not in message.split("its layers:")[1]


def test_an_output_head_tied_to_the_embeddings_is_refused_saying_so(tiny_model_dir):
    with pytest.raises(ConfigError, match="'lm_head' is the output head, which shares its weight"):
        add_lora(load_causal_lm(tiny_model_dir), r=4, alpha=8, target_modules=["lm_head"])


def untied_llama(directory):
    """A one-layer Llama whose output head has a weight of its own, saved to `directory`."""
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def test_an_untied_output_head_takes_adapters(tmp_path):
    model = add_lora(
        load_causal_lm(untied_llama(tmp_path)), r=2, alpha=4, target_modules=["lm_head"]
    )
    assert {n.split(".")[-4] for n, p in model.named_parameters() if "lora_A" in n} == {"lm_head"}


def test_adapters_gathered_from_shards_merge_onto_the_same_layers(tiny_model_dir):
    """Rank 0 merges a sharded LoRA policy's gathered weights into a fresh copy of the start:
    that copy must carry adapters on the layers the policy had them on."""
    torch.manual_seed(0)
    targets = ("k_proj", "down_proj")
    trained = add_lora(load_causal_lm(tiny_model_dir), r=4, alpha=8, target_modules=targets)
    for name, param in trained.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)
    weights = {k: v.clone() for k, v in trained.state_dict().items()}
    merged = merged_gathered(load_causal_lm(tiny_model_dir), weights, 4, 8, targets)
    expected = copy.deepcopy(trained).merge_and_unload().state_dict()
    assert merged.state_dict().keys() == expected.keys()
    for key, value in expected.items():
        assert torch.allclose(merged.state_dict()[key], value, atol=1e-6), key


def test_reward_model_adapters_take_the_named_layers(tiny_model_dir):
    model = RewardModel.from_pretrained(tiny_model_dir)
    add_backbone_lora(model, r=4, alpha=8, dropout=0.05, target_modules=("up_proj",))
    assert {n.split(".")[-4] for n, p in model.named_parameters() if "lora_A" in n} == {"up_proj"}
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0} == {0.05}


@pytest.mark.parametrize("targets", [[], ()])
def test_an_empty_list_of_target_layers_is_refused_by_name(tiny_model_dir, targets):
    """`lora_target_modules=[]` is a one-line config error, not peft's traceback."""
    with pytest.raises(ConfigError, match="lora_target_modules: empty"):
        add_lora(load_causal_lm(tiny_model_dir), r=4, alpha=8, target_modules=targets)
    with pytest.raises(ConfigError, match="lora_target_modules: empty"):
        add_backbone_lora(RewardModel.from_pretrained(tiny_model_dir), 4, 8, 0.0, targets)
