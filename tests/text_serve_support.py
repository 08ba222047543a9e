"""The text bundle the server tests serve (tests/conftest.py's ``text_bundle``): a
``tokenizer.json`` for it and operating points fitted on its own random texts."""
from __future__ import annotations

from text_models import text_batch

CORPUS = ["a warm and funny film", "a dull slow film", "the cast is superb", "rain all day again",
          "the plot is thin and slow", "a joy from start to end"]


def build_tokenizer(path) -> None:
    """A word-level ``tokenizer.json`` trained on :data:`CORPUS` ([PAD] 0, [UNK] 1, [CLS] 2 first:
    fewer ids than the encoder's vocabulary of 64), as docs/guides/text.md builds one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", 2)])
    tok.save(str(path))


def store_points(bundle) -> None:
    """Operating points ``mp`` (max_prob, the default) and ``ent`` (entropy) whose thresholds
    are the median confidence / entropy of exits 0 and 1 on random texts: about half the
    samples leave at exit 0, a quarter at exit 1."""
    import numpy as np

    from ranet_edge.runtime import ExitChain
    from ranet_edge.runtime.decision import softmax
    from ranet_edge.runtime.operating_points import OperatingPoint, save_point

    chain = ExitChain.load(bundle, warmup=False)
    logits = chain.run_all({k: v.numpy() for k, v in text_batch(64, 10, seed=99).items()})
    probs = [softmax(z) for z in logits[:-1]]
    conf = [float(np.median(p.max(axis=1))) for p in probs]
    ent = [float(np.median(-(p * np.log(p)).sum(axis=1))) for p in probs]
    common = {"val_accuracy": 0.0, "expected_flops": 1.0, "expected_ms": None}
    save_point(bundle, "ent", OperatingPoint((*ent, -np.inf), "median entropy", rule="entropy", **common))
    save_point(bundle, "mp", OperatingPoint((*conf, -np.inf), "median confidence", **common), default=True)
