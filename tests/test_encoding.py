import numpy as np

from seqmux.encoding import N_TOKEN, count_n, detokenize, one_hot, tokenize


def test_tokens_follow_agct_order_and_ignore_case():
    assert tokenize("AGCTagct").tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_n_and_other_iupac_codes_are_all_zero():
    x = one_hot(tokenize("ANRYKMSWBDHVn-"))
    assert x.shape == (4, 14)
    assert x[:, 0].tolist() == [1, 0, 0, 0]
    assert np.all(x[:, 1:] == 0)
    assert count_n("ANRYKMSWBDHVn-") == 13


def test_one_hot_columns_and_batches():
    x = one_hot(np.stack([tokenize("ACGT"), tokenize("TGCA")]))
    assert x.shape == (2, 4, 4) and x.dtype == np.float32
    # A,G,C,T rows: C is row 2, G is row 1
    assert x[0, :, 1].tolist() == [0, 0, 1, 0]
    assert x[0, :, 2].tolist() == [0, 1, 0, 0]
    assert np.all(x.sum(axis=1) == 1)


def test_detokenize_round_trip_upper_case():
    assert detokenize(tokenize("acgtNNr")) == "ACGTNNN"
    # every printable character: A,C,G,T in either case keep their base, anything else becomes N,
    # whose token one-hot encodes to a zero column
    text = "".join(chr(c) for c in range(32, 127))
    tokens = tokenize(text)
    expected = "".join(c.upper() if c.upper() in "ACGT" else "N" for c in text)
    assert detokenize(tokens) == expected
    assert np.all((tokens == N_TOKEN) == np.array([c == "N" for c in expected]))
    assert np.all(one_hot(tokens)[:, tokens == N_TOKEN] == 0) and np.all(one_hot(tokens)[:, tokens < 4].sum(0) == 1)
