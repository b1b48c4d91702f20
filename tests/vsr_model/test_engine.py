import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.vsr_model.conftest import tiny_dual_encoder_config
from vsr_model.engine import DualEncoderEngine, Hit, SearchEngine
from vsr_model.engine.fit import FitConfig, info_nce
from vsr_model.engine.query import mean_pool, splice_soft_tokens
from vsr_model.metrics import recall_summary, score_ranks, video_retrieval
from vsr_model.video import VideoClip

TEXTS = ["a small red circle moves left", "the blue astronaut spins on a brick wall background"]


def clip(seed: int, frames: int = 4) -> VideoClip:
    rng = np.random.default_rng(seed)
    return VideoClip(
        rng.integers(0, 255, (frames, 40, 40, 3), dtype=np.uint8), np.arange(frames) + 0.5, float(frames), 1.0
    )


def test_dimensions_come_from_the_configs(tiny_engine):
    assert tiny_engine.embed_dim == 32 and tiny_engine.query_input_dim == 32
    cfg = tiny_dual_encoder_config()
    cfg.text.hidden_size = 48
    assert DualEncoderEngine(cfg).embed_dim == 48


def test_query_encoding_matches_plain_mean_pooling(tiny_engine):
    tok, model = tiny_engine.query_encoder.tokenizer, tiny_engine.query_encoder.model
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    expected = F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)
    got = tiny_engine.encode_query(TEXTS)
    assert got.shape == (2, 32) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-5)
    # padding a shorter query in a batch does not change it
    assert torch.allclose(tiny_engine.encode_query(TEXTS[:1]), got[:1], atol=1e-5)


def test_soft_tokens_sit_after_the_content_before_sep(tiny_engine):
    enc = tiny_engine.query_encoder
    contents = enc.tokenize(TEXTS)
    soft = torch.randn(2, 3, 32)
    b = splice_soft_tokens(enc.model.get_input_embeddings(), enc.prefix, contents, enc.suffix, 0, soft, 64)
    emb = enc.model.get_input_embeddings()
    for row, content in enumerate(contents):
        start = len(enc.prefix) + len(content)
        assert b.soft_positions[row].tolist() == [start, start + 1, start + 2]
        assert torch.equal(b.inputs_embeds[row, start : start + 3], soft[row])
        sep = b.last_index[row]
        assert sep == start + 3 and torch.equal(b.inputs_embeds[row, sep], emb.weight[enc.suffix[0]])
        assert b.attention_mask[row].sum() == sep + 1
    assert b.attention_mask[0, -1] == 0  # the shorter first query is right-padded


def test_soft_tokens_change_the_embedding_and_carry_gradients(tiny_engine):
    soft = torch.randn(2, 4, tiny_engine.query_input_dim, requires_grad=True)
    refined = tiny_engine.encode_query(TEXTS, soft)
    assert refined.requires_grad
    assert not torch.allclose(refined, tiny_engine.encode_query(TEXTS), atol=1e-3)
    assert torch.allclose(refined.norm(dim=-1), torch.ones(2), atol=1e-5)
    (refined[:, 0].sum() + refined[:, 5].sum()).backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_engine.query_encoder.model.parameters())
    empty = torch.zeros(2, 0, tiny_engine.query_input_dim)
    assert torch.allclose(tiny_engine.encode_query(TEXTS, empty), tiny_engine.encode_query(TEXTS))


@pytest.mark.parametrize(
    "soft, error",
    [
        (torch.zeros(2, 3, 31), ValueError),
        (torch.zeros(3, 3, 32), ValueError),
        (torch.zeros(2, 32), ValueError),
        (torch.full((2, 1, 32), float("nan")), ValueError),
        (torch.zeros(2, 1, 32, dtype=torch.long), TypeError),
    ],
)
def test_bad_soft_tokens_are_rejected(tiny_engine, soft, error):
    with pytest.raises(error, match="soft_tokens"):
        tiny_engine.encode_query(TEXTS, soft)


def test_bad_queries_are_rejected(tiny_engine):
    with pytest.raises(ValueError, match="non-empty strings"):
        tiny_engine.encode_query("a single string")
    with pytest.raises(ValueError, match="non-empty strings"):
        tiny_engine.encode_query(["ok", "  "])


def test_video_encoding_is_normalised_and_batch_independent(tiny_engine):
    clips = [clip(0, 3), clip(1, 6), clip(2, 5)]
    out = tiny_engine.encode_videos(clips)
    assert out.shape == (3, 32)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(tiny_engine.encode_videos(clips[:1]), out[:1], atol=1e-5)  # padding is masked
    with pytest.raises(TypeError, match="VideoClip"):
        tiny_engine.encode_videos([np.zeros((2, 8, 8, 3), np.uint8)])


def unit_rows(n: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_index_search_exclude_and_stored_embeddings(tiny_engine):
    vecs = unit_rows(5)
    ids = [f"v{i}" for i in range(5)]
    tiny_engine.add_videos(ids, vecs)
    hits = tiny_engine.search(vecs[[3, 1]], k=2)
    assert [h[0].video_id for h in hits] == ["v3", "v1"]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5) and hits[0][0].score >= hits[0][1].score
    expected_second = ids[int(torch.argsort(vecs @ vecs[3], descending=True)[1])]
    assert hits[0][1].video_id == expected_second
    excl = tiny_engine.search(vecs[[3]], k=4, exclude=[{"v3", expected_second}])
    assert [h.video_id for h in excl[0]] and not {"v3", expected_second} & {h.video_id for h in excl[0]}
    assert len(excl[0]) == 3  # only 3 videos remain
    assert torch.allclose(tiny_engine.video_embeddings(["v4", "v0"]), vecs[[4, 0]], atol=1e-6)
    assert isinstance(tiny_engine.search(TEXTS, k=1)[0][0], Hit)


def test_index_rejects_bad_input(tiny_engine):
    with pytest.raises(RuntimeError, match="empty"):
        tiny_engine.search(unit_rows(1), k=1)
    tiny_engine.add_videos(["a", "b"], unit_rows(2))
    with pytest.raises(ValueError, match="already in the index"):
        tiny_engine.add_videos(["a"], unit_rows(1))
    with pytest.raises(ValueError, match="repeated"):
        tiny_engine.add_videos(["c", "c"], unit_rows(2))
    with pytest.raises(ValueError, match="shape"):
        tiny_engine.add_videos(["d"], torch.zeros(1, 31))
    with pytest.raises(ValueError, match="NaN"):
        tiny_engine.search(torch.full((1, 32), float("nan")), k=1)
    with pytest.raises(KeyError, match="unknown video ids"):
        tiny_engine.video_embeddings(["zzz"])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        tiny_engine.search(unit_rows(1), k=0)
    with pytest.raises(ValueError, match="exclude has 2 entries"):
        tiny_engine.search(unit_rows(1), k=1, exclude=[set(), set()])


def test_save_load_roundtrip(tmp_path, tiny_engine):
    clips = [clip(3), clip(4)]
    vecs = tiny_engine.encode_videos(clips)
    tiny_engine.add_videos(["x", "y"], vecs)
    tiny_engine.save(tmp_path / "eng")
    loaded = SearchEngine.load(tmp_path / "eng")
    assert isinstance(loaded, DualEncoderEngine) and len(loaded) == 2
    assert torch.allclose(loaded.encode_videos(clips), vecs, atol=1e-5)
    assert torch.allclose(loaded.encode_query(TEXTS), tiny_engine.encode_query(TEXTS), atol=1e-6)
    assert loaded.search(TEXTS, k=2) == tiny_engine.search(TEXTS, k=2)
    with pytest.raises(FileNotFoundError, match="not a saved engine"):
        SearchEngine.load(tmp_path)


def test_the_index_is_saved_by_vsr_index_and_served_from_its_memory_map(tmp_path, tiny_engine):
    import vsr_index

    vecs = unit_rows(30, seed=2)
    ids = [f"v{i:02d}" for i in range(30)]
    tiny_engine.add_videos(ids, vecs)
    tiny_engine.save(tmp_path / "eng")
    assert vsr_index.index_kind(tmp_path / "eng" / "index.vsr") == "flat"
    loaded = SearchEngine.load(tmp_path / "eng")
    assert not (tmp_path / "eng" / "index_vectors.npy").exists()  # rows come from the index itself
    assert loaded.index.index.is_mapped
    assert loaded.video_ids == ids and loaded.search(vecs[:5], k=3) == tiny_engine.search(vecs[:5], k=3)
    # the cosine index returns the normalised rows it stores: the unit inputs up to rounding
    assert torch.allclose(loaded.video_embeddings(["v07", "v03"]), vecs[[7, 3]], atol=1e-6)
    assert torch.equal(loaded.video_embeddings(["v07", "v03"]), tiny_engine.video_embeddings(["v07", "v03"]))
    assert loaded.index.index.is_mapped  # reading rows copies nothing
    np.testing.assert_allclose(loaded.index.vectors(), vecs.numpy(), atol=1e-6)
    assert loaded.session(vecs[4], k=2).hits == tiny_engine.session(vecs[4], k=2).hits
    # a loaded engine takes more videos and saves over its own folder
    more = unit_rows(2, seed=3)
    loaded.add_videos(["new0", "new1"], more)
    assert loaded.search(more, k=1)[1][0].video_id == "new1"
    loaded.save(tmp_path / "eng")
    again = SearchEngine.load(tmp_path / "eng")
    assert again.video_ids == [*ids, "new0", "new1"]
    assert torch.allclose(again.video_embeddings(["new1", "v00"]), torch.cat([more[1:], vecs[:1]]), atol=1e-6)
    # the earlier layout (rows as index_vectors.npy + ids, no index file) is indexed from its rows
    (tmp_path / "eng" / "index.vsr").unlink()
    with pytest.raises(FileNotFoundError, match=r"neither index\.vsr nor index_vectors\.npy"):
        SearchEngine.load(tmp_path / "eng")
    np.save(tmp_path / "eng" / "index_vectors.npy", again.index.vectors())
    old = SearchEngine.load(tmp_path / "eng")
    assert not old.index.index.is_mapped and old.search(vecs[:3], k=2) == again.search(vecs[:3], k=2)
    assert torch.allclose(
        old.video_embeddings(["new1", "v00"]), again.video_embeddings(["new1", "v00"]), atol=1e-7
    )
    # saving it writes the current layout and drops the superseded rows
    old.save(tmp_path / "eng")
    assert (tmp_path / "eng" / "index.vsr").is_file() and not (
        tmp_path / "eng" / "index_vectors.npy"
    ).exists()
    # an index file that does not belong to the id map is refused
    other = vsr_index.FlatIndex(32, "cosine")
    other.add(unit_rows(3).numpy())
    other.save(tmp_path / "eng" / "index.vsr")
    with pytest.raises(ValueError, match="rebuild it"):
        SearchEngine.load(tmp_path / "eng")


def test_info_nce_hand_computed():
    q = torch.eye(3)
    t = 0.5
    expected = -np.log(np.exp(2.0) / (np.exp(2.0) + 2))
    assert float(info_nce(q, q, t)) == pytest.approx(expected, rel=1e-5)


def test_ranks_and_recall():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    videos = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    ranks = score_ranks(queries, videos, np.array([0, 2, 2]))
    assert ranks.tolist() == [1, 1, 3]
    s = recall_summary(ranks, 3, ks=(1, 2))
    assert s["R@1"] == pytest.approx(2 / 3) and s["R@2"] == pytest.approx(2 / 3)
    assert s["chance_R@1"] == pytest.approx(1 / 3) and s["MRR"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    # the agent's VR metric over explicit rankings is the same computation, in percent
    names = ["a", "b", "c"]
    rankings = [[names[j] for j in torch.argsort(queries[i] @ videos.T, descending=True)] for i in range(3)]
    vr = video_retrieval(rankings, [names[t] for t in (0, 2, 2)], ks=(1, 2))
    assert vr["r1"] == pytest.approx(100 * s["R@1"]) and vr["mrr"] == pytest.approx(100 * s["MRR"])
    with pytest.raises(ValueError, match="3 targets for 2 queries"):
        score_ranks(queries[:2], videos, np.array([0, 1, 2]))


@pytest.mark.slow
def test_fit_learns_to_retrieve_the_training_videos(tiny_benchmark, monkeypatch):
    """The pooler learns to map each video near its captions. Random deep encoders collapse their
    inputs to nearly one direction, so this uses the real EfficientNet-Lite0 weights (at 32 px) and
    replaces the text side by fixed distinct unit vectors per caption."""
    from vsr_model.corpus import Corpus
    from vsr_model.data import read_moments
    from vsr_model.engine.fit import evaluate_features, extract_features, fit_pooler

    cfg = tiny_dual_encoder_config()
    cfg.frames.weights = "packaged"
    tiny_engine = DualEncoderEngine(cfg)
    train = read_moments(tiny_benchmark / "annotations" / "synth_train.jsonl").moments
    table = {m.query: v for m, v in zip(train, unit_rows(len(train), seed=1), strict=True)}
    monkeypatch.setattr(
        tiny_engine, "encode_query", lambda texts, soft_tokens=None: torch.stack([table[t] for t in texts])
    )
    corpus = Corpus.from_jsonl(tiny_benchmark / "videos.jsonl", sampling=tiny_engine.sampling)
    feats = extract_features(tiny_engine, corpus, sorted({m.video_id for m in train}), progress=False)
    queries = torch.stack([table[m.query] for m in train])
    before = evaluate_features(tiny_engine, train, feats, queries)
    history = fit_pooler(
        tiny_engine,
        train,
        feats,
        FitConfig(epochs=40, batch_size=6, lr=3e-3, warmup_steps=5, temperature=0.1),
    )
    after = evaluate_features(tiny_engine, train, feats, queries)
    assert len(history) == 40
    assert np.mean([h["loss"] for h in history[-5:]]) < 0.5 * history[0]["loss"]
    assert after["MRR"] > before["MRR"] and after["R@1"] >= 0.9
    with pytest.raises(ValueError, match="FitConfig"):
        FitConfig(batch_size=1)


def test_session_refine_excludes_seen_videos_and_matches_search(tiny_engine):
    vecs = unit_rows(40, seed=5)
    ids = [f"v{i:02d}" for i in range(40)]
    tiny_engine.add_videos(ids, vecs)
    q0, q1, q2 = unit_rows(3, seed=6)
    s = tiny_engine.session(q0, k=3)
    assert s.hits == tiny_engine.search(q0[None], k=3)[0]
    assert s.seen == [h.video_id for h in s.hits] and s.turns == 1
    first = set(s.seen)
    hits = s.refine(q1, k=3)
    assert hits == tiny_engine.search(q1[None], k=3, exclude=[first])[0]
    hits2 = s.refine(q2)  # k defaults to the session's
    assert len(hits2) == 3 and not {h.video_id for h in hits2} & set(s.seen[:6])
    assert len(s.seen) == 9 and len(set(s.seen)) == 9 and s.turns == 3
    assert s.info["exact"] is True
    # without exclude_seen a refinement is a plain search; `exclude` holds for every turn
    s2 = tiny_engine.session(q0, k=3, exclude_seen=False, exclude={"v00", "v01"})
    assert s2.refine(q1, 3) == tiny_engine.search(q1[None], k=3, exclude=[{"v00", "v01"}])[0]
    # a session can start from text
    assert len(tiny_engine.session(TEXTS[0], k=2).hits) == 2
    with pytest.raises(ValueError, match="one query"):
        tiny_engine.session(unit_rows(2), k=2)
    with pytest.raises(ValueError, match="one query embedding"):
        s.refine(unit_rows(2))


class _Planted:
    """Unpickling it unrestricted runs code (creates `marker`)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_a_planted_feature_cache_is_ignored_without_running_code(tmp_path, caplog):
    """`vsr engine fit` keeps features_train.pt / features_val.pt in its output folder; a file planted
    there is read without unpickling objects, reported, and replaced by recomputed features."""
    from types import SimpleNamespace

    from vsr_model.backbones import FrameEncoderConfig
    from vsr_model.engine.dual import FrameFeatures
    from vsr_model.engine.fit import extract_features
    from vsr_model.video import FrameSampling

    computed = []

    def frame_features(clip):
        computed.append(clip)
        return FrameFeatures(torch.full((2, 3), float(len(clip))), torch.tensor([0.0, 1.0]), 2.0)

    engine = SimpleNamespace(
        config=SimpleNamespace(frames=FrameEncoderConfig()), frame_features=frame_features
    )
    corpus = SimpleNamespace(sampling=FrameSampling(), clip=lambda vid: vid)
    cache = tmp_path / "features_train.pt"
    marker = tmp_path / "pwned"
    torch.save({"key": None, "items": {"a": _Planted(marker)}}, cache)
    with caplog.at_level("WARNING"):
        feats = extract_features(engine, corpus, ["a", "bb"], cache_file=cache, progress=False)
    assert not marker.exists()
    assert "ignoring the frame-feature cache" in caplog.text
    assert computed == ["a", "bb"] and torch.equal(feats["bb"].features, torch.full((2, 3), 2.0))
    # The replacement is a valid cache: the next run reads it instead of computing.
    again = extract_features(engine, corpus, ["a", "bb"], cache_file=cache, progress=False)
    assert computed == ["a", "bb"] and torch.equal(again["a"].features, feats["a"].features)
    # A torn cache (a kill during a write elsewhere) is recomputed the same way.
    cache.write_bytes(cache.read_bytes()[:100])
    extract_features(engine, corpus, ["a"], cache_file=cache, progress=False)
    assert computed == ["a", "bb", "a"]
