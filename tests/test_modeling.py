"""Tokenizers and models: the tiny tokenizer carries Qwen's special tokens and template; load/save refuse what is not
a model with a clear message; LoRA adapters round-trip through save and load."""
import pytest
import torch

from helpers import config, modeling


def test_tiny_tokenizer_has_qwen_special_tokens_and_default_system(tiny_tokenizer):
    ids = {t: tiny_tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert ids == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert tiny_tokenizer.pad_token_id == 0 and tiny_tokenizer.eos_token_id == 2
    text = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "Tell me a joke."}], tokenize=False)
    assert text.startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n")


@pytest.mark.hostile
def test_load_model_names_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match="neither config.json nor adapter_config.json"):
        modeling.load_model(tmp_path)


@pytest.mark.hostile
def test_quantisation_without_cuda_is_a_clear_error(tmp_path, tiny_tokenizer):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    folder = modeling.save_model(modeling.build_tiny_model(tiny_tokenizer, config.get_config("smoke").model, 0),
                                 tmp_path / "m", tiny_tokenizer)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        modeling.load_model(folder, quant=4)


def test_lora_adapters_round_trip(tmp_path, tiny_tokenizer):
    base = modeling.save_model(modeling.build_tiny_model(tiny_tokenizer, config.get_config("smoke").model, 0),
                               tmp_path / "base", tiny_tokenizer)
    lora = modeling.load_model(base, lora_cfg=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                   init_lora_weights=False))
    modeling.save_model(lora, tmp_path / "adapter", tiny_tokenizer)
    again = modeling.load_model(tmp_path / "adapter")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(lora.eval()(input_ids=ids).logits, again.eval()(input_ids=ids).logits, atol=1e-6)


def test_weights_load_as_fp32_masters_so_small_updates_are_not_lost(tmp_path, tiny_tokenizer):
    """Qwen2.5 ships bf16 weights. Loaded as they are, one AdamW step at lr 1e-5 leaves nearly every weight of
    magnitude ~0.02 unchanged (the bf16 spacing there is 1.2e-4); loaded as fp32 masters (the default), it moves them
    all."""
    model = modeling.build_tiny_model(tiny_tokenizer, config.get_config("smoke").model, 0)
    folder = modeling.save_model(model.to(torch.bfloat16), tmp_path / "bf16", tiny_tokenizer)
    changed = {}
    for name, loaded, dtype in (("fp32 masters", modeling.load_model(folder), torch.float32),          # default
                                ("stored bf16", modeling.load_model(folder, dtype=None), torch.bfloat16)):
        weight = loaded.model.layers[0].mlp.up_proj.weight
        assert weight.dtype == dtype
        big = weight.detach().abs() > 0.01
        before = weight.detach().clone()
        optimizer = torch.optim.AdamW([weight], lr=1e-5, weight_decay=0.0)
        weight.grad = torch.ones_like(weight)
        optimizer.step()
        changed[name] = float((weight.detach() != before)[big].float().mean())
    assert changed["fp32 masters"] == 1.0 and changed["stored bf16"] < 0.05
