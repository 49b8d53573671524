import torch

from flip.data.tokenizer import Tokenizer


def test_tokenizer_is_real_clip_bpe_and_deterministic():
    tok = Tokenizer(32)
    a = tok(["a small red circle in the top left", "a blue square"])
    b = tok(["a small red circle in the top left", "a blue square"])
    assert torch.equal(a, b)
    assert a.shape == (2, 32) and a.dtype == torch.long
    assert a[0, 0].item() == 49406  # SOT
    assert 49407 in a[0].tolist()  # EOT
    assert a[0, -1].item() == 0  # padding
    assert tok.vocab_size == 49408


def test_tokenizer_truncates_keeping_eot():
    tok = Tokenizer(8)
    out = tok("one two three four five six seven eight nine ten")
    assert out.shape == (1, 8) and out[0, -1].item() == 49407
