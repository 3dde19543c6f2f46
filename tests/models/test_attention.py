"""The temporal-attention decoder: shapes, teacher forcing equals stepping, decoding, checkpoints."""
import pytest
import torch

from s2vt.models.attention import AttentionS2VT
from s2vt.models.checkpoint import Checkpoint, CheckpointError
from s2vt.decoding.search import Fusion, beam_search, greedy
from s2vt.models.s2vt import ModelConfig
from s2vt.data.vocab import Vocab
from commands import s2vt_in_process


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return AttentionS2VT(ModelConfig(feat_dim=6, vocab_size=9, embed=5, hidden=7, dropout=0.0, decoder="attention",
                                     **kw)).eval()


def test_shapes_loss_and_one_step():
    m = tiny().train()
    feats, lens = torch.randn(3, 5, 6), torch.tensor([5, 2, 4])
    words_in = torch.tensor([[1, 4, 5, 6], [1, 7, 0, 0], [1, 8, 4, 0]])
    targets = torch.tensor([[4, 5, 6, 2], [7, 2, 0, 0], [8, 4, 2, 0]])
    logits, loss = m(feats, lens, words_in, targets)
    assert logits.shape == (3, 4, 9) and torch.isfinite(loss)
    loss.backward()
    assert m.att_q.weight.grad.abs().sum() > 0
    a = m.attention(feats, lens, words_in)
    assert a.shape == (3, 4, 5)
    torch.testing.assert_close(a.sum(-1), torch.ones(3, 4))
    assert float(a[1, :, 2:].abs().max()) == 0.0   # no weight on padding frames


def test_teacher_forcing_equals_stepping():
    m = tiny()
    feats, lens = torch.randn(2, 6, 6), torch.tensor([6, 3])
    words_in = torch.tensor([[1, 4, 5, 6], [1, 7, 8, 4]])
    with torch.no_grad():
        logits, _ = m(feats, lens, words_in)
        state = m.encode(feats, lens)
        for t in range(4):
            lp, state = m.step(words_in[:, t], state)
            torch.testing.assert_close(lp, torch.log_softmax(logits[:, t], -1), atol=1e-5, rtol=1e-5)


def test_batched_beam_equals_one_by_one_and_fusion():
    m, m2 = tiny(0), tiny(1)
    feats, lens = torch.randn(3, 5, 6), torch.tensor([5, 3, 4])
    batched = beam_search(m, (feats, lens), beam=3, max_len=6)
    for i in range(3):
        one = beam_search(m, (feats[i:i + 1, :lens[i]], lens[i:i + 1]), beam=3, max_len=6)
        assert one[0] == batched[i]
    assert beam_search(m, (feats, lens), beam=1, max_len=6) == greedy(m, (feats, lens), max_len=6)
    fused = greedy(Fusion([(m, 0.5), (m2, 0.5)]), [(feats, lens), (feats, lens)], max_len=6)
    assert len(fused) == 3


def test_checkpoint_records_and_rebuilds_the_decoder(tmp_path):
    m = tiny()
    vocab = Vocab(["a", "b", "c", "d", "e"])
    ck = Checkpoint(m.cfg, m.state_dict(), vocab, {"format_version": 1, "stream": "rgb", "backbone": "imported:test", "dim": 6})
    ck.save(tmp_path / "a.pt")
    back = Checkpoint.load(tmp_path / "a.pt").build_model()
    assert isinstance(back, AttentionS2VT)
    d = torch.load(tmp_path / "a.pt", weights_only=True)
    d["model_config"]["decoder"] = "transformer"
    torch.save(d, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="decoder 'transformer'.*known: s2vt, attention"):
        Checkpoint.load(tmp_path / "b.pt")


def test_attention_models_train_evaluate_fuse_and_caption_raw_files(tiny_features, tmp_path):
    import json

    from s2vt.captioning.captioner import Captioner, Member
    from s2vt.data.corpora import load_corpus
    from s2vt.training.config import TrainConfig
    from s2vt.training.loop import train

    root, stores = tiny_features
    for stream in ("rgb", "flow"):
        train(TrainConfig.from_dict(dict(dataset="synthetic", annotations=str(root), features=str(stores[stream]),
                                         out=str(tmp_path / stream), epochs=1, batch_size=8, lr=3e-3, val_meteor=False,
                                         model=ModelConfig(embed=16, hidden=24, dropout=0.0, decoder="attention"))),
              progress=False)
    rgb, flow = str(tmp_path / "rgb" / "best.pt"), str(tmp_path / "flow" / "best.pt")
    corpus = load_corpus("synthetic", root)
    test = corpus.splits["test"]
    fused = Captioner.from_members([Member(rgb, str(stores["rgb"])), Member(flow, str(stores["flow"]))],
                                   streams=["rgb", "flow"])
    caps = fused.caption(test, weights=[0.5, 0.5], beam=2)
    assert set(caps) == set(test)
    video = str(corpus.video_path(test[0]))
    p = s2vt_in_process("caption", video, "--checkpoint", rgb, "--checkpoint-flow", flow, "--json", "--attention",
                        "--beam", "2")
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout.strip().splitlines()[-1])
    frames = 4  # 16 frames, one in 4
    for stream in ("rgb", "flow"):
        att = rec["attention"][stream]
        assert [a["word"] for a in att] == rec["caption"].split() + ["<eos>"]
        for a in att:
            assert len(a["weights"]) == frames and abs(sum(a["weights"]) - 1) < 1e-4
    p = s2vt_in_process("caption", video, "--checkpoint", rgb, "--attention")
    assert p.returncode == 2 and "add --json" in p.stderr and len(p.stderr.strip().splitlines()) == 1
