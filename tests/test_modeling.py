"""Tokenizers and models: the tiny tokenizer carries Qwen's special tokens and template; load/save refuse what is not
a model with a clear message; LoRA adapters round-trip through save and load; QLoRA (a 4/8-bit base) trains here."""
import math
import sys

import pytest
import torch

from helpers import config, modeling, sft, training


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


@pytest.mark.parametrize("quant", [4, 8])
def test_qlora_trains_adapters_on_a_kbit_base_here(tmp_path, sft_world, quant):
    """bitsandbytes' CPU kernels: the one loop's LoRA steps on a 4-bit (NF4, double quantisation) or 8-bit base —
    the base frozen and quantised, the adapters learning, the loss finite and falling."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    cfg, tokenizer, examples = sft_world
    base = modeling.save_model(modeling.build_tiny_model(tokenizer, cfg.model, 0), tmp_path / "base", tokenizer)
    lora = dict(r=8, lora_alpha=16, target_modules="all-linear")
    model = modeling.load_model(base, quant=quant, lora_cfg=lora).to(config.device())
    kind = bnb.nn.Linear4bit if quant == 4 else bnb.nn.Linear8bitLt
    assert modeling.is_quantized(model) and any(isinstance(m, kind) for m in model.modules())
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_cfg = config.replace_config(cfg.sft, max_steps=8, batch_size=8, lr=5e-3, eval_every=4, save_every=8)
    held = examples[:16]
    history = training.train(model, tokenizer, examples, train_cfg, sft.sft_loss,
                             sft.sft_collate(tokenizer.pad_token_id), tmp_path / "run",
                             eval_fn=lambda m: {"eval/loss": sft.evaluate_loss(m, held, tokenizer.pad_token_id)})
    losses = [h["eval/loss"] for h in history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)   # base untouched
    assert (tmp_path / "run" / "adapter_config.json").exists()        # a QLoRA checkpoint keeps its adapters


def test_a_merged_qlora_model_is_the_full_precision_base_plus_its_adapters(tmp_path, tiny_tokenizer):
    pytest.importorskip("bitsandbytes")
    smoke = config.get_config("smoke").model
    base = modeling.save_model(modeling.build_tiny_model(tiny_tokenizer, smoke, 0), tmp_path / "base", tiny_tokenizer)
    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    quantized = modeling.load_model(base, quant=4, lora_cfg=lora)
    merged = modeling.load_model(modeling.save_model(quantized, tmp_path / "merged", tiny_tokenizer, merge=True))
    assert not modeling.is_quantized(merged) and not (tmp_path / "merged" / "adapter_config.json").exists()
    full = modeling.load_model(base)
    layer = quantized.base_model.model.model.layers[0].self_attn.q_proj
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    expected = full.model.layers[0].self_attn.q_proj.weight + delta
    assert torch.allclose(merged.model.layers[0].self_attn.q_proj.weight, expected, atol=1e-6)   # fp32, not NF4
    assert torch.equal(merged.model.layers[0].mlp.up_proj.weight, full.model.layers[0].mlp.up_proj.weight)


@pytest.mark.hostile
def test_quantisation_without_lora_or_without_bitsandbytes_is_one_clear_line(tmp_path, tiny_tokenizer, monkeypatch):
    with pytest.raises(config.ConfigError, match="quant = 4 needs ModelConfig.lora: 4/8-bit weights are frozen"):
        config.get_config("smoke", model__quant=4)
    folder = modeling.save_model(modeling.build_tiny_model(tiny_tokenizer, config.get_config("smoke").model, 0),
                                 tmp_path / "m", tiny_tokenizer)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)          # as if it were not installed
    with pytest.raises(config.ProjectError, match=r"4-bit loading needs bitsandbytes \(pip install"):
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
