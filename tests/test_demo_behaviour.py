"""What the demo checkpoint was trained to show, measured with the notebooks' own functions.

The corpus (llama3.tools.demo_corpus) looks the answer up by two words far back in the question
and repeats random spans; these tests check on the built file that the model learned to use
attention for it, as notebooks 09, 10, 11 and 15 show.
"""

import pytest
import torch

import llama3

ANSWER_ID = 2983  # "42"


@pytest.fixture(scope="module")
def trace(demo, demo_prompt):
    return llama3.trace_layers(demo.weights, demo.config, demo_prompt)


@pytest.fixture(scope="module")
def echo(demo):
    token_ids = llama3.encode_prompt(demo.tokenizer, llama3.ECHO_PROMPT, demo.config)
    return token_ids, llama3.trace_layers(demo.weights, demo.config, token_ids)


def test_answers_42_with_probability_at_least_half(demo, demo_prompt):
    logits = llama3.forward(demo.weights, demo.config, demo_prompt, last_only=True)[0]
    assert int(logits.argmax()) == ANSWER_ID
    assert torch.softmax(logits, -1)[ANSWER_ID] >= 0.5


def test_logit_lens_shows_42_emerging_late(demo, trace):
    ranks = llama3.lens_ranks(trace, demo.weights, demo.config, ANSWER_ID)
    assert len(ranks) == demo.config.n_layers + 1
    assert ranks[0] > 10 and ranks[1] > 10, ranks  # after the embeddings and after layer 0
    first = llama3.first_top1(ranks)
    assert first is not None and first >= demo.config.n_layers / 2, ranks
    assert ranks[-1] == 1


def test_lens_helpers_on_a_known_case():
    assert llama3.first_top1([50, 3, 1, 2, 1]) == 2 and llama3.first_top1([4, 2]) is None


def test_a_previous_token_head(trace):
    scores = llama3.head_scores(trace, llama3.previous_token_scores)  # [layers, heads]
    assert scores.max() >= 0.5, scores


def test_an_attention_sink_on_begin_of_text(trace):
    scores = llama3.head_scores(trace, llama3.sink_scores)
    assert scores.max() >= 0.5, scores


def test_a_head_reads_the_answer_words(demo, demo_prompt, trace):
    positions = llama3.word_positions(demo.tokenizer, demo_prompt, llama3.ANSWER_WORDS)
    assert llama3.token_texts(demo.tokenizer, [demo_prompt[p] for p in positions]) == [" life", " universe"]
    scores = llama3.head_scores(trace, llama3.attention_from_last, positions)
    assert scores.max() >= 0.5, scores
    even_spread = len(positions) / len(demo_prompt)
    assert even_spread < 0.15  # what a head that looks everywhere alike would score


def test_an_induction_head_copies_a_repeated_span(demo, echo):
    token_ids, echo_trace = echo
    period = llama3.ECHO_PERIOD
    texts = llama3.token_texts(demo.tokenizer, token_ids)
    assert [t.strip() for t in texts[period + 1 :]] == [t.strip() for t in texts[1 : len(texts) - period]]
    scores = llama3.head_scores(echo_trace, llama3.induction_scores, period)
    assert scores.max() >= 0.5, scores
    logits = llama3.forward(demo.weights, demo.config, token_ids)
    assert llama3.copy_accuracy(logits, token_ids, period) >= 0.9


def test_score_functions_on_a_made_up_map():
    """Each score reads the entries it names: previous-token, sink, even-spread and induction maps."""
    n, period = 7, 3
    rows = torch.arange(n)
    previous = torch.zeros(n, n)
    previous[rows, (rows - 1).clamp(min=0)] = 1
    sink = torch.zeros(n, n)
    sink[:, 0] = 1
    even = torch.tril(torch.ones(n, n)) / (rows + 1)[:, None]
    induction = torch.zeros(n, n)
    induction[rows, (rows - period + 1).clamp(min=0)] = 1
    attention = torch.stack([previous, sink, even, induction])
    assert llama3.previous_token_scores(attention).tolist()[:2] == [1.0, pytest.approx(1 / (n - 1))]  # t=1 looks at 0
    assert llama3.previous_token_scores(attention)[2] == pytest.approx(even.diagonal(-1).mean())
    assert llama3.sink_scores(attention).tolist()[:2] == [pytest.approx(1 / (n - 1)), 1.0]
    assert llama3.attention_from_last(attention, [n - 2]).tolist()[:3] == [1.0, 0.0, pytest.approx(1 / n)]
    assert llama3.induction_scores(attention, period).tolist() == [
        0.0,
        0.0,
        pytest.approx(sum(1 / (t + 1) for t in range(period + 1, n)) / (n - period - 1)),
        1.0,
    ]


def test_key_value_heads_differ(demo):
    """Grouped-query attention for real: every layer's key/value heads are different projections."""
    c = demo.config
    assert c.n_kv_heads >= 2 and c.queries_per_kv_head >= 2
    for layer in range(c.n_layers):
        lw = llama3.layer_weights(demo.weights, layer)
        for w in (lw.wk, lw.wv):
            heads = llama3.split_heads(w, c.n_kv_heads).float()  # [K, d, D]
            for a in range(c.n_kv_heads):
                for b in range(a + 1, c.n_kv_heads):
                    cosine = torch.nn.functional.cosine_similarity(heads[a].flatten(), heads[b].flatten(), dim=0)
                    assert cosine.abs() < 0.9, (layer, a, b, float(cosine))
