"""Search-engine family 1 (an HF embedding VLM) on tiny random Qwen3-VL / Qwen2.5-VL configs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_policy_fakes import tiny_qwen_model

from tests.vsr_model.conftest import tiny_dual_encoder_config
from vsr_model.config import config_from_dict
from vsr_model.corpus import Corpus
from vsr_model.engine import DualEncoderEngine, SearchEngine, VLMEmbeddingConfig, VLMEmbeddingEngine
from vsr_model.engine.vlm import CHAT_SUFFIX, chat_prefix
from vsr_model.video import FrameSampling, VideoClip

TEXTS = ["a person opens the door and walks to the kitchen", "red circle", "a blue square grows"]


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen2_5_vl"])
def tiny(request):
    """(model, tokenizer, pixel budget) of one tiny random Qwen-VL, shared by the module's tests."""
    return tiny_qwen_model(request.param)


@pytest.fixture(scope="module")
def qwen3():
    return tiny_qwen_model("qwen3_vl")


def make_engine(tiny, **overrides) -> VLMEmbeddingEngine:
    model, tokenizer, (lo, hi) = tiny
    values = dict(model=None, min_pixels=lo, max_pixels=hi, dtype="float32")
    values.update(overrides)
    values.setdefault("sampling", FrameSampling(fps=1.0, max_frames=4))
    return VLMEmbeddingEngine(VLMEmbeddingConfig(**values), model=model, tokenizer=tokenizer)


def clip(seed: int, frames: int = 4, size: int = 48, times=None) -> VideoClip:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (frames, size, size + 16, 3), dtype=np.uint8)
    ts = np.asarray(times if times is not None else np.arange(frames) * 2.0 + 0.5, dtype=np.float64)
    return VideoClip(pixels, ts, float(ts[-1] + 1.0), 1.0)


def reference_query_embedding(engine: VLMEmbeddingEngine, text: str) -> torch.Tensor:
    """The embedder by hand: one unpadded chat prompt through the model, last position, L2-normalised."""
    prompt = chat_prefix(engine.config.instruction) + text + CHAT_SUFFIX
    ids = engine.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = engine.model(input_ids=ids).last_hidden_state
    return F.normalize(hidden[0, -1], dim=-1)


def test_dimensions_come_from_the_model_config(tiny):
    engine = make_engine(tiny)
    hidden = tiny[0].config.get_text_config().hidden_size
    assert engine.embed_dim == hidden and engine.query_input_dim == hidden
    assert engine.family == "vlm_embedding" and len(engine) == 0


def test_query_embeddings_are_the_normalised_last_token_of_the_instruction_prompt(tiny):
    engine = make_engine(tiny)
    got = engine.encode_query(TEXTS)
    assert got.shape == (3, engine.embed_dim) and got.dtype == torch.float32
    assert torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-5)
    for row, text in enumerate(TEXTS):
        assert torch.allclose(got[row], reference_query_embedding(engine, text), atol=1e-4)
    other = make_engine(tiny, instruction="Retrieve the video that shows the event.")
    assert not torch.allclose(other.encode_query(TEXTS), got, atol=1e-3)


def test_left_and_right_padding_pool_the_same_last_real_token(tiny):
    right, left = make_engine(tiny, padding_side="right"), make_engine(tiny, padding_side="left")
    a, b = right.encode_query(TEXTS), left.encode_query(TEXTS)
    assert torch.allclose(a, b, atol=1e-4)
    for row, text in enumerate(TEXTS):  # alone (no padding) == inside a batch of other lengths
        assert torch.allclose(right.encode_query([text])[0], a[row], atol=1e-4)
    batch = right.splice_queries(TEXTS)
    lengths = batch.attention_mask.sum(1)
    assert len(set(lengths.tolist())) == 3 and batch.last_index.tolist() == (lengths - 1).tolist()
    assert left.splice_queries(TEXTS).last_index.tolist() == [batch.input_ids.shape[1] - 1] * 3


@pytest.mark.parametrize("side", ["right", "left"])
def test_soft_tokens_are_spliced_right_after_the_query_content(qwen3, side):
    engine = make_engine(qwen3, padding_side=side)
    n = 3
    soft = torch.randn(len(TEXTS), n, engine.query_input_dim)
    batch = engine.splice_queries(TEXTS, soft)
    table = engine.model.get_input_embeddings().weight
    im_end = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row, text in enumerate(TEXTS):
        content = engine.tokenize([text])[0]
        real = batch.attention_mask[row].nonzero().flatten()
        start = int(real[0])
        ids = batch.input_ids[row, real].tolist()
        expected = engine.query_prefix + content + [engine.pad_id] * n + engine.suffix
        assert ids == expected
        at = start + len(engine.query_prefix) + len(content)
        assert batch.soft_positions[row].tolist() == list(range(at, at + n))
        assert torch.equal(batch.inputs_embeds[row, at : at + n], soft[row])
        # the closing chat tokens follow the soft tokens, and the pooled token is the last of them
        assert int(batch.input_ids[row, at + n]) == im_end
        assert torch.equal(batch.inputs_embeds[row, at + n], table[im_end])
        assert int(batch.last_index[row]) == int(real[-1]) == at + n + len(engine.suffix) - 1


def test_soft_tokens_change_the_embedding_and_carry_gradients(tiny):
    engine = make_engine(tiny)
    soft = torch.randn(3, 4, engine.query_input_dim, requires_grad=True)
    refined = engine.encode_query(TEXTS, soft)
    assert refined.requires_grad
    assert torch.allclose(refined.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(refined, engine.encode_query(TEXTS), atol=1e-3)
    (refined[:, 0].sum() - refined[:, 7].sum()).backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0 and torch.isfinite(soft.grad).all()
    assert all(p.grad is None for p in engine.model.parameters())
    # each row's soft tokens only move that row
    other = soft.detach().clone()
    other[1] += 1.0
    moved = engine.encode_query(TEXTS, other)
    assert torch.allclose(moved[[0, 2]], refined.detach()[[0, 2]], atol=1e-5)
    assert not torch.allclose(moved[1], refined.detach()[1], atol=1e-3)


def test_zero_soft_tokens_are_deterministic(qwen3):
    engine = make_engine(qwen3)
    plain = engine.encode_query(TEXTS)
    none = torch.zeros(3, 0, engine.query_input_dim)
    assert torch.equal(engine.encode_query(TEXTS, none), plain)  # N = 0 is no refinement at all
    zeros = torch.zeros(3, 8, engine.query_input_dim)
    first, second = engine.encode_query(TEXTS, zeros), engine.encode_query(TEXTS, zeros)
    assert torch.equal(first, second) and not torch.allclose(first, plain, atol=1e-4)
    assert torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize(
    "soft, error, match",
    [
        (torch.zeros(3, 2, 63), ValueError, "soft_tokens must have shape"),
        (torch.zeros(2, 2, 64), ValueError, "soft_tokens must have shape"),
        (torch.zeros(3, 64), ValueError, "soft_tokens must have shape"),
        (torch.full((3, 1, 64), float("nan")), ValueError, "NaN"),
        (torch.zeros(3, 1, 64, dtype=torch.long), TypeError, "floating-point"),
    ],
)
def test_bad_soft_tokens_are_rejected(qwen3, soft, error, match):
    with pytest.raises(error, match=match):
        make_engine(qwen3).encode_query(TEXTS, soft)


def test_bad_inputs_are_rejected(qwen3):
    engine = make_engine(qwen3)
    with pytest.raises(ValueError, match="non-empty sequence"):
        engine.encode_query([])
    with pytest.raises(ValueError, match="non-empty sequence"):
        engine.encode_query("a single string")
    with pytest.raises(ValueError, match="non-empty string"):
        engine.encode_query(["fine", "   "])
    with pytest.raises(ValueError, match="no clips"):
        engine.encode_videos([])
    bad = clip(0)
    bad.timestamps = bad.timestamps[:2]
    with pytest.raises(ValueError, match="timestamps"):
        engine.encode_videos([bad])
    with pytest.raises(ValueError, match="padding_side"):
        VLMEmbeddingConfig(padding_side="middle")
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict(VLMEmbeddingConfig, {"modle": "x"})
    with pytest.raises(ValueError, match="tokenizer"):
        VLMEmbeddingEngine(VLMEmbeddingConfig(model=None), model=qwen3[0])
    long_query = " ".join(["door"] * 2000)  # truncated to max_length, not an error
    assert make_engine(qwen3, max_length=64).splice_queries([long_query]).input_ids.shape[1] == 64


def test_videos_are_embedded_from_frames_and_their_true_times(tiny):
    engine = make_engine(tiny)
    clips = [clip(0, 4), clip(1, 6), clip(2, 3, size=64)]
    out = engine.encode_videos(clips)
    assert out.shape == (3, engine.embed_dim) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(engine.encode_videos(clips[1:2])[0], out[1], atol=1e-4)  # padding is masked
    left = make_engine(tiny, padding_side="left")
    assert torch.allclose(left.encode_videos(clips), out, atol=1e-4)
    # the same frames at other true times are another video (times are in the prompt / the M-RoPE)
    shifted = clip(0, 4, times=[0.5, 20.0, 41.0, 70.0])
    assert not torch.allclose(engine.encode_videos([shifted])[0], out[0], atol=1e-4)


def test_search_finds_the_video_of_a_video_derived_query(tiny):
    engine = make_engine(tiny)
    ids = [f"v{i}" for i in range(6)]
    vectors = engine.encode_videos([clip(10 + i, 3 + i % 3) for i in range(6)])
    engine.add_videos(ids, vectors)
    noise = 0.02 * torch.randn(6, engine.embed_dim, generator=torch.Generator().manual_seed(0))
    queries = F.normalize(vectors + noise, dim=-1)
    expected_top1 = (queries @ vectors.T).argmax(1).tolist()
    assert expected_top1 == list(range(6))  # the noise keeps every query nearest its own video
    assert [hits[0].video_id for hits in engine.search(queries, k=3)] == ids
    session = engine.session(queries[2], k=1)
    assert session.hits[0].video_id == "v2" and session.refine(queries[2])[0].video_id != "v2"
    assert torch.allclose(engine.video_embeddings(["v4", "v1"]), vectors[[4, 1]], atol=1e-6)
    assert len(engine.search(TEXTS, k=2)[0]) == 2  # texts go through encode_query


def test_save_load_roundtrip_and_family_dispatch(tmp_path, tiny):
    engine = make_engine(tiny)
    clips = [clip(3), clip(4)]
    vectors = engine.encode_videos(clips)
    engine.add_videos(["x", "y"], vectors)
    engine.save(tmp_path / "vlm")
    assert (tmp_path / "vlm" / "model" / "config.json").is_file()  # an in-memory model's weights are kept
    loaded = SearchEngine.load(tmp_path / "vlm")
    assert isinstance(loaded, VLMEmbeddingEngine) and loaded.video_ids == ["x", "y"]
    assert loaded.config == engine.config
    assert torch.equal(loaded.encode_query(TEXTS), engine.encode_query(TEXTS))
    assert torch.equal(loaded.encode_videos(clips), vectors)
    soft = torch.randn(3, 2, engine.query_input_dim)
    assert torch.equal(loaded.encode_query(TEXTS, soft), engine.encode_query(TEXTS, soft))
    assert loaded.search(TEXTS, k=2) == engine.search(TEXTS, k=2)
    assert isinstance(VLMEmbeddingEngine.load(tmp_path / "vlm"), VLMEmbeddingEngine)
    DualEncoderEngine(tiny_dual_encoder_config()).save(tmp_path / "dual")
    assert isinstance(SearchEngine.load(tmp_path / "dual"), DualEncoderEngine)
    with pytest.raises(TypeError, match="dual_encoder engine, not VLMEmbeddingEngine"):
        VLMEmbeddingEngine.load(tmp_path / "dual")


def test_a_checkpoint_path_is_loaded_and_saved_by_reference(tmp_path, qwen3):
    """A real run names an HF checkpoint (hub name or folder); the engine then stores only the name."""
    model, tokenizer, (lo, hi) = qwen3
    checkpoint = tmp_path / "Tiny-Qwen3-VL-Embedding"
    model.save_pretrained(checkpoint)  # the ...ForConditionalGeneration layout released checkpoints use
    tokenizer.save_pretrained(checkpoint)
    config = VLMEmbeddingConfig(model=str(checkpoint), min_pixels=lo, max_pixels=hi, dtype="float32")
    engine = VLMEmbeddingEngine(config)
    assert torch.allclose(engine.encode_query(TEXTS), make_engine(qwen3).encode_query(TEXTS), atol=1e-5)
    assert config.image_mean == (0.5, 0.5, 0.5)  # the family default, recorded in the saved config
    engine.save(tmp_path / "eng")
    assert not (tmp_path / "eng" / "model").exists()
    assert torch.equal(SearchEngine.load(tmp_path / "eng").encode_query(TEXTS), engine.encode_query(TEXTS))
    config.store_weights = True
    engine.save(tmp_path / "eng_with_weights")
    assert (tmp_path / "eng_with_weights" / "model" / "config.json").is_file()


def test_cli_init_corpus_build_and_eval_with_the_vlm_engine(tmp_path, tiny_benchmark, qwen3, capsys):
    """`vsr engine init` from a checkpoint folder, then `vsr corpus build` and `vsr engine eval`."""
    import json

    import yaml

    from vsr_index.cli import main

    model, tokenizer, (lo, hi) = qwen3
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    settings = {"model": str(tmp_path / "ckpt"), "dtype": "float32", "min_pixels": lo, "max_pixels": hi,
                "sampling": {"fps": 0.5, "max_frames": 4, "max_pixels": 48 * 64}}  # fmt: skip
    (tmp_path / "engine.yaml").write_text(yaml.safe_dump({"family": "vlm_embedding", "engine": settings}))
    assert (
        main(["engine", "init", "--config", str(tmp_path / "engine.yaml"), "--out", str(tmp_path / "base")])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["family"] == "vlm_embedding"
    assert main(["corpus", "build", "--engine", str(tmp_path / "base"), "--videos", str(tiny_benchmark / "videos.jsonl"),
                 "--split", "test", "--out", str(tmp_path / "idx"), "--batch-size", "3", "--quiet"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["indexed"] == 4
    built = SearchEngine.load(tmp_path / "idx" / "engine")
    assert isinstance(built, VLMEmbeddingEngine) and built.config.sampling.max_frames == 4
    corpus = Corpus.from_jsonl(tiny_benchmark / "videos.jsonl", split="test", sampling=built.sampling)
    assert built.video_ids == corpus.ids
    direct = make_engine(qwen3, sampling=built.sampling).encode_videos([corpus.clip(v) for v in corpus.ids])
    assert torch.allclose(built.video_embeddings(corpus.ids), direct, atol=1e-4)
    assert [h[0].video_id for h in built.search(direct, k=1)] == corpus.ids
    assert main(["engine", "eval", "--engine", str(tmp_path / "idx" / "engine"), "--annotations",
                 str(tiny_benchmark / "annotations" / "synth_test.jsonl"), "--out", str(tmp_path / "r.json")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())["all"]
    assert report["videos"] == 4 and 0 <= report["R@1"] <= report["R@5"] == 1.0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"family": "vlm", "engine": settings}))
    with pytest.raises(ValueError, match="unknown engine family 'vlm'"):
        main(["engine", "init", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")])
