from s2vt.data.vocab import SPECIALS, Vocab, tokenize


def test_tokenize_lowercases_and_strips_punctuation():
    assert tokenize("A man's riding, FAST!  ") == ["a", "man", "s", "riding", "fast"]
    assert tokenize("...") == []


def test_vocab_from_training_only_with_min_count():
    train = ["a dog runs", "a dog jumps", "a cat runs"]
    v = Vocab.build(train, min_count=2)
    assert v.itos[:4] == list(SPECIALS)
    assert set(v.itos[4:]) == {"a", "dog", "runs"}
    assert v.itos[4] == "a"  # most frequent first
    # a test word never seen in training is <unk>
    assert v.encode("a zebra runs") == [v.stoi["a"], v.unk, v.stoi["runs"]]
    assert "zebra" not in v.stoi


def test_vocab_on_synthetic_has_no_test_only_words(tiny_synth):
    from s2vt.data.corpora import load_corpus

    root, _ = tiny_synth
    c = load_corpus("synthetic", root)
    v = Vocab.build([x for vid in c.splits["train"] for x in c.captions[vid]])
    train_words = {w for vid in c.splits["train"] for x in c.captions[vid] for w in tokenize(x)}
    assert set(v.itos[4:]) == train_words


def test_encode_decode_roundtrip_and_rebuild_from_its_list():
    v = Vocab.build(["a red ball moves left"])
    ids = v.encode("a red ball moves left", max_words=3)
    assert v.decode(ids + [v.eos, v.stoi["left"]]) == "a red ball"
    assert Vocab.from_list(list(v.itos)) == v  # as a checkpoint stores it
