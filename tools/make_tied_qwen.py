"""Makes the tied-embedding twin of a local Qwen2.5-architecture checkpoint, for `make qwen-smoke`:

    .venv/bin/python tools/make_tied_qwen.py SRC DST

Qwen/Qwen2.5-0.5B (base) ties its output head to its input embeddings; the checkpoint that
../shared/tools/get-real-qwen.sh builds (Qwen2.5-Coder-0.5B-Instruct) does not. Tying changes what LoRA merges,
resizes and saves (a naive merge or resize can untie or break the head), so the qwen code path is run on both. The
twin reuses the embedding matrix as the head: its outputs differ from SRC's, its shapes and code path are the base's.
"""
import sys
from pathlib import Path


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    src, dst = map(Path, args)
    if not (src / "config.json").exists():
        print(f"{src} holds no config.json: not a Hugging Face checkpoint", file=sys.stderr)
        return 2
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.config.tie_word_embeddings = True
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    print(dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
