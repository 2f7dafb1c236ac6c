"""Shared fixtures: tiny offline tokenizers and tiny random backbones of every family."""

from __future__ import annotations

import os
from pathlib import Path

# Tiny test models gain nothing from threads and slow down badly when the cores are shared;
# subprocesses started by tests inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from prefheads.families import profiles  # noqa: E402

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "Question: what is the capital of France? Answer: Paris",
    "yes no positive negative True False Neither A. B. C. D.", "Hello world, prefheads! Sentence 1 Sentence 2",
    "Below is an instruction that describes a task. Write a response.", "system user assistant 0 1 2 3 4 5",
]


def make_tokenizer(chat: bool = True):
    """A small byte-level BPE tokenizer with ChatML specials, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<pad>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if chat:
        tok.chat_template = CHATML
    return tok


def _cfg(family: str, vocab: int):
    """The config of a tiny random ``family`` model: the ``tiny`` block of its zoo profile (the
    vocabulary goes to the language model's config, nested in multimodal ones such as gemma3)."""
    from transformers import AutoConfig

    from prefheads.families import profiles

    tiny = profiles()[family].tiny
    if "text_config" in tiny:
        return AutoConfig.for_model(family, **{**tiny, "text_config": {**tiny["text_config"], "vocab_size": vocab}})
    return AutoConfig.for_model(family, vocab_size=vocab, **tiny)


PAPER_HEAD = {"pooler": "swiglu", "objective": "separable", "layer": "-1", "lm_score": "none", "template": "paper"}
"""Fit options of the paper's head (SwiGLU pooler, last layer, separable DPH loss, AdamW epochs):
for tests of the training loop itself, which ``fit``'s defaults (the ridge solver) do not run."""
PAPER_ARGS = [a for k, v in PAPER_HEAD.items() for a in (f"--{k.replace('_', '-')}", v)]
"""The same as ``prefheads fit`` options."""

# every model family the zoo gives a tiny config: the matrix of the family tests
FAMILIES = [name for name, prof in profiles().items() if prof.tiny]


def make_backbone(family: str, tok=None, seed: int = 0):
    """A tiny random causal LM of ``family`` matching ``tok``'s vocabulary."""
    from transformers import AutoModelForCausalLM

    tok = tok or make_tokenizer()
    torch.manual_seed(seed)
    cfg = _cfg(family, len(tok))
    for c in {id(cfg): cfg, id(cfg.get_text_config()): cfg.get_text_config()}.values():
        c.pad_token_id = tok.pad_token_id
        c.eos_token_id = tok.eos_token_id
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    return model.eval(), tok


@pytest.fixture(scope="session")
def tok():
    return make_tokenizer()


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real dataset copies (../shared/data beside the checkout)."""
    p = Path(os.environ.get("PREFHEADS_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not p.is_dir():
        pytest.skip(f"real data not found at {p}")
    return p


def save_to_hub_cache(model, tok, repo_id: str, hf_home: Path, revision: str = "0" * 40) -> Path:
    """Lay out ``model`` as the hub cache would after a download of ``repo_id``."""
    hub = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = hub / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(snap)
    tok.save_pretrained(snap)
    (hub / "refs").mkdir(exist_ok=True)
    (hub / "refs" / "main").write_text(revision)
    return snap


# ----------------------------------------------------------------------------- order independence
def pytest_addoption(parser):
    parser.addoption("--shuffle", metavar="SEED", default=os.environ.get("PREFHEADS_TEST_SHUFFLE"),
                     help="run the tests in a random order drawn from SEED (or $PREFHEADS_TEST_SHUFFLE): "
                          "a test must not depend on what ran before it")


def pytest_collection_modifyitems(config, items):
    seed = config.getoption("--shuffle")
    if seed is not None:
        import random

        random.Random(str(seed)).shuffle(items)


def pytest_report_header(config):
    seed = config.getoption("--shuffle")
    return f"test order shuffled with seed {seed!r}" if seed is not None else None


@pytest.fixture(scope="module")
def two_head_pm():
    """A tiny model with two heads: ``a`` (SwiGLU, active) and ``b`` (BERT pooler)."""
    from test_evaluation import tiny_pm

    pm = tiny_pm()
    pm.add_head("a", "swiglu", init_std=0.5)
    pm.add_head("b", "bert", init_std=0.5, activate=False)
    return pm
