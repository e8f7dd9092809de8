"""Tokenizers and models: the tiny byte-level BPE tokenizer (Qwen's special tokens and ChatML template), the tiny
Qwen2 model, and load/save for any Hugging Face checkpoint (LoRA, quantisation). Imports: config."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from .config import ModelConfig, ProjectError


IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"


# ChatML as Qwen2.5 writes it (without tools); the tiny tokenizer carries the same template and special tokens.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


# Qwen2's pre-tokenizer: digits split one by one, so arithmetic is learnable digit by digit.
QWEN_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                    r"\s*[\r\n]+|\s+(?!\S)|\s+")


def train_tiny_tokenizer(texts, vocab_size: int):
    """A byte-level BPE tokenizer trained on the tiny world, with Qwen's special tokens and ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT,
                                   bos_token=None, unk_token=None, model_max_length=4096)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(tokenizer, cfg: ModelConfig, seed: int):
    """A randomly initialised Qwen2ForCausalLM sized by cfg (tied embeddings, like Qwen2.5-0.5B)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                         intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                         max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
                         pad_token_id=tokenizer.pad_token_id, rope_theta=10000.0, attention_dropout=0.0)
    return Qwen2ForCausalLM(config)


def load_tokenizer(model_name, trust_remote_code: bool = False):
    """AutoTokenizer with a pad token guaranteed (Qwen: <|endoftext|>); eos is read from the tokenizer, not assumed."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(model_name), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        tokenizer.pad_token = ENDOFTEXT if ENDOFTEXT in vocab else tokenizer.eos_token
    return tokenizer


def as_lora_config(lora_cfg):
    """Accept a peft.LoraConfig or a dict of its fields."""
    from peft import LoraConfig
    if lora_cfg is None or isinstance(lora_cfg, LoraConfig):
        return lora_cfg
    if not isinstance(lora_cfg, dict):
        raise TypeError(f"lora_cfg must be a peft.LoraConfig or a dict, got {type(lora_cfg).__name__}")
    return LoraConfig(**lora_cfg)


@contextlib.contextmanager
def peft_reads_old_names():
    """peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecated in favour of
    `is_activation_checkpointing`: that one FutureWarning, from that one read, is silenced — every other stays."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def add_lora(model, lora_cfg):
    """LoRA adapters on a model (peft)."""
    from peft import get_peft_model
    with peft_reads_old_names():
        return get_peft_model(model, as_lora_config(lora_cfg))


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing: recompute each layer's activations in backward instead of keeping them.
    transformers 5 renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable`; use what exists."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def quiet_output() -> None:
    """Notebooks call this in their first cell: Hugging Face's own progress bars (loading and writing weights,
    downloads) and info logs off — in an executed notebook they are dozens of widgets that read 0 %. Errors still
    show; the project's own long loops keep one progress bar each."""
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        import datasets
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    except ImportError:       # datasets is only needed by the hub profiles
        pass
    short_project_errors()


def short_project_errors() -> None:
    """In a notebook, the project's own errors (ProjectError: a missing stage, a bad config value, a corrupt
    checkpoint) show as their one-line message, as on the command line — not a 20-frame traceback; the cell still
    fails. Other errors (bugs) keep their traceback. Outside IPython nothing happens."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def one_line(shell, etype, value, tb, tb_offset=None):
        return [f"{etype.__name__}: {' '.join(str(value).split())}"]
    shell.set_custom_exc((ProjectError,), one_line)


def load_model(model_name, quant: int | None = None, lora_cfg=None, dtype=torch.float32,
               trust_remote_code: bool = False):
    """A causal LM from a hub id or local dir; optional 4/8-bit base (bitsandbytes, `quantization_config`) and LoRA
    adapters.

    A directory holding a LoRA adapter (adapter_config.json) is loaded onto its base model. Weights load in fp32 by
    default, whatever the checkpoint stores (Qwen2.5 ships bf16): these are the master weights AdamW updates, and
    CUDA runs the matmuls in bf16 under autocast. Plain-bf16 AdamW loses updates: at |w| ≈ 0.02 a bf16 step is
    1.2e-4, so an lr-1e-5 update rounds away (tests/test_modeling.py). `dtype=None` keeps the stored dtype.
    """
    from transformers import AutoModelForCausalLM
    path = Path(str(model_name))
    if path.exists() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"{path} has neither config.json nor adapter_config.json: not a model directory")
    kwargs = {"trust_remote_code": trust_remote_code}
    if quant is not None:
        kwargs["quantization_config"] = quantization_config(quant)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM
        with peft_reads_old_names():
            return check_finite(AutoPeftModelForCausalLM.from_pretrained(str(path), is_trainable=True, **kwargs),
                                model_name)
    model = AutoModelForCausalLM.from_pretrained(str(model_name), **kwargs)
    check_finite(model, model_name)
    lora = as_lora_config(lora_cfg)
    if lora is not None:
        from peft import prepare_model_for_kbit_training
        if quant is not None:
            model = prepare_model_for_kbit_training(model)
        model = add_lora(model, lora)
    return model


def quantization_config(quant: int):
    """QLoRA's base (Dettmers et al. 2023): 4-bit NormalFloat with double quantisation (the quantisation constants
    quantised too), or LLM.int8() for 8 bits. The matmuls run in bf16 where CUDA has it, else fp32: bitsandbytes has
    CPU kernels since 0.46, so the same code trains here and on a card. LoRA's adapters stay fp32 and trainable."""
    if quant not in (4, 8):
        raise ValueError(f"quant must be 4, 8 or None, got {quant!r}")
    try:
        import bitsandbytes  # noqa: F401  (transformers imports it lazily: a missing install fails here, in a line)
    except ImportError:
        raise ProjectError(f"{quant}-bit loading needs bitsandbytes (pip install 'bitsandbytes>=0.46'; its CPU "
                           "kernels came in 0.46)") from None
    from transformers import BitsAndBytesConfig
    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=quant == 4, load_in_8bit=quant == 8, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)


def is_quantized(model) -> bool:
    """Whether a model (or a peft model around one) holds bitsandbytes 4/8-bit weights."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)
                or getattr(base, "is_quantized", False))


def dequantized(model):
    """A LoRA model on a 4/8-bit base as a full-precision model with the adapters merged in: the base reloaded in
    fp32 from its own checkpoint, then the adapters added (peft's merge into a Linear4bit would round the sum back to
    4 bits). Not bit for bit the model that trained: its adapters learned against the NF4-rounded base."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)                   # the adapters, naming the base checkpoint they sit on
        return load_model(tmp).merge_and_unload()


class CorruptWeights(ProjectError, ValueError):
    """A model whose weights hold NaN or inf: every output would be NaN, and a stage started from it would blame
    its own learning rate."""


def check_finite(model, name):
    """The model, if every weight is a finite number; CorruptWeights naming the folder and a tensor otherwise."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise CorruptWeights(f"{name}: {len(bad)} weight tensor(s) hold NaN or inf ({bad[0]}, …): the checkpoint is "
                             "corrupt — train its stage again (restart=True / --restart / RESTART=1)")
    return model


def embeddings_resized(peft_model) -> bool:
    """Has the embedding table grown beyond the base checkpoint's vocabulary (new tokens)? Then an adapter
    checkpoint must carry the embedding layers, or it cannot be loaded onto the base model again."""
    from transformers import AutoConfig
    base = next(iter(peft_model.peft_config.values())).base_model_name_or_path
    rows = peft_model.get_input_embeddings().weight.shape[0]
    return bool(base) and rows != AutoConfig.from_pretrained(base).vocab_size


def save_model(model, save_dir, tokenizer=None, merge: bool = False, extra: dict | None = None,
               state_dict: dict | None = None) -> Path:
    """Hugging Face format (safetensors) with config and tokenizer beside it; LoRA adapters as adapters, or merged.

    `extra` files (name -> a JSON-able dict, or text) are written too, e.g. the run config and config.yml.
    `state_dict`: the weights to write in place of the model's own (FSDP's gathered full weights; the model object
    then holds only shards).
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if merge and hasattr(model, "merge_and_unload"):
        model = dequantized(model) if is_quantized(model) else model.merge_and_unload()
    options = {} if state_dict is None else {"state_dict": state_dict}
    if hasattr(model, "peft_config"):       # peft's "auto" would guess, and warn, when new tokens resized the table
        options["save_embedding_layers"] = embeddings_resized(model)
    model.save_pretrained(save_dir, safe_serialization=True, **options)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_dir)
    for name, content in (extra or {}).items():
        text = content if isinstance(content, str) else json.dumps(content, indent=2, default=str)
        (save_dir / name).write_text(text)
    return save_dir


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def autocast_context(device):
    """bf16 autocast where the model is on CUDA (fp32 master weights, bf16 matmuls); plain fp32 elsewhere."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def merged_adapters(model):
    """LoRA folded into the base weights for the duration (peft merge_adapter / unmerge_adapter), so generation runs
    one matmul per layer instead of base + A·B at every token; nothing to do for a model without adapters. The
    unmerge subtracts what was added: the frozen base can move by float rounding (~1 ulp per merge), never more."""
    if not hasattr(model, "merge_adapter"):
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()


def disable_dropout(model) -> None:
    """Dropout off (LoRA's included), as TRL does for DPO and RLOO: the policy's log-probs in the loss must come from
    the same function that sampled the responses and computed the reference, not a randomly thinned one."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
