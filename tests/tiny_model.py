"""A tiny Llama with random weights and a byte-level BPE tokenizer, built in a second.

Greedy decoding on it is deterministic. The EOS row of the (tied) output layer is zeroed so
greedy generation never ends early, which makes token-count assertions exact.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Queues hold jobs; workers take them in batches and write results.",
    "Hello world! Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ? !",
    "A small model for tests speaks in random words but always the same ones.",
]
# Like many real templates, it knows no `tool` role and says so by raising.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'tool' %}"
    "{{ raise_exception('this template has no tool role') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(path: Path, context: int = 256) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    eos, pad, bos = (
        tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "<|im_start|>")
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=True,
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()
        model.lm_head.weight[pad].zero_()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_mismatched_model(path: Path, source: Path, vocab_size: int = 64) -> Path:
    """The tiny model's tokenizer over weights cut to its first `vocab_size` tokens: a
    checkpoint paired with a tokenizer it was not trained with. It loads; a prompt with a
    token past the weights' vocabulary fails in the forward pass (the engine raises), one
    made only of the first tokens runs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source)
    model.resize_token_embeddings(vocab_size)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path
