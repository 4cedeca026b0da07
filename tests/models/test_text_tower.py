"""medsearch.models.text_tower: MiniLM's lean forward pass gives transformers' hidden states exactly."""

import pytest
import torch

from medsearch.models.quantize import quantize_linear
from medsearch.models.text_tower import MiniLM, _LeanBert

TEXTS = ["right lower lobe 8 mm solid nodule", "emphysema", "右肺下叶 8 mm 实性结节", "left pleural effusion"]


@pytest.fixture(scope="module")
def minilm() -> MiniLM:
    return MiniLM()


def test_the_shipped_minilm_takes_the_lean_pass(minilm):
    assert _LeanBert.applies(minilm.bert)
    assert minilm._lean_bert() is minilm._lean_bert()          # built once per bert


@pytest.mark.parametrize("text", TEXTS)
def test_lean_hidden_states_equal_transformers_for_one_text(minilm, text):
    tok = minilm.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        expected = minilm.bert(**tok).last_hidden_state
        got = minilm._lean_bert()(**tok)
    assert got.shape == expected.shape == (1, tok["input_ids"].shape[1], 384)
    assert torch.equal(got, expected)


def test_lean_hidden_states_equal_transformers_on_a_padded_batch(minilm):
    tok = minilm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    real = tok["attention_mask"].bool()
    assert not real.all()                                        # the batch is padded
    with torch.no_grad():
        expected = minilm.bert(**tok).last_hidden_state
        got = minilm._lean_bert()(**tok)
    assert torch.equal(got[real], expected[real])


def test_sentence_vectors_are_the_mean_of_transformers_hidden_states(minilm):
    tok = minilm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = minilm.bert(**tok).last_hidden_state
    mask = tok["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(minilm(TEXTS), (hidden * mask).sum(1) / mask.sum(1), rtol=0, atol=1e-6)


def test_an_int8_bert_keeps_its_own_forward(minilm):
    int8 = MiniLM.__new__(MiniLM)
    torch.nn.Module.__init__(int8)
    int8.tokenizer, int8.max_length = minilm.tokenizer, minilm.max_length
    int8.bert = quantize_linear(minilm.bert)
    assert not _LeanBert.applies(int8.bert) and int8._lean_bert() is None
    tok = minilm.tokenizer(TEXTS[:1], return_tensors="pt")
    with torch.no_grad():
        expected = int8.bert(**tok).last_hidden_state.mean(1)
    torch.testing.assert_close(int8(TEXTS[:1]), expected, rtol=0, atol=1e-6)


def test_a_bert_in_training_mode_keeps_its_own_forward(minilm):
    minilm.bert.train()
    try:
        assert not _LeanBert.applies(minilm.bert)
    finally:
        minilm.bert.eval()


def test_a_replaced_bert_gets_a_new_lean_pass(minilm):
    first = minilm._lean_bert()
    original = minilm.bert
    minilm.bert = quantize_linear(original)
    try:
        assert minilm._lean_bert() is None
    finally:
        minilm.bert = original
    assert minilm._lean_bert() is not first and minilm._lean_bert().bert is original


def test_hidden_states_equal_transformers_on_every_position_padding_included(minilm):
    # the reranker reads every token's state under its mask; the search pipeline reads them as they come
    tok = minilm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = minilm.bert(**tok).last_hidden_state
        assert torch.equal(minilm.hidden_states(tok), expected)
    with torch.inference_mode():
        assert torch.equal(minilm.hidden_states(tok), expected)


def test_hidden_states_with_gradients_on_come_from_transformers(minilm, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the lean pass ran with gradients on")

    tok = minilm.tokenizer(TEXTS[:1], return_tensors="pt")
    monkeypatch.setattr(_LeanBert, "__call__", refuse)
    with torch.enable_grad():
        got = minilm.hidden_states(tok)
    with torch.no_grad(), pytest.raises(AssertionError, match="lean pass"):
        minilm.hidden_states(tok)
    assert got.shape == (1, tok["input_ids"].shape[1], 384)
