"""Tiny, randomly initialised VideoSearch-R1 stacks built from the real classes: a synthetic benchmark
with decoded videos, a dual-encoder engine indexing them, and a composite video policy. Used by the
tests and the step-time benchmark, so both exercise the real code paths in seconds."""

from __future__ import annotations

from pathlib import Path


def tiny_video_policy(
    embed_dim: int, query_input_dim: int, num_latents: int = 3, seed: int = 0, options: dict | None = None
):
    """A randomly initialised composite video policy (tiny Llama + tiny frame encoder + SQR heads)
    with a byte-level BPE tokenizer trained on the protocol's own words; `options` are further
    CompositePolicyConfig settings (frame pooling, tokens per frame, connector)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from vsr_model.backbones import tiny_frame_encoder
    from vsr_model.policy.composite import CHATML_TEMPLATE, CompositePolicyConfig, CompositeVideoPolicy
    from vsr_model.protocol import build_verify_prompt, format_response
    from vsr_model.sqr import SQRConfig

    corpus = [
        build_verify_prompt("a red circle moves left", 30.0).system,
        build_verify_prompt("a red circle moves left", 30.0, "hard").system,
        format_response("the circle moves at the start", True, (1.5, 12.25)),
        format_response("this video shows a square", False),
        "0123456789 . s < > system user assistant red blue green circle square moves grows appears",
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer) + 2,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        )
    )
    sqr = SQRConfig(embed_dim=embed_dim, query_input_dim=query_input_dim, num_latents=num_latents)
    # The EfficientNet-Lite0 architecture (random weights) under its real name, so a saved policy reloads.
    config = CompositePolicyConfig(llm="tiny", frame_size=32, **(options or {}))
    encoder = tiny_frame_encoder(image_size=32, seed=seed, pooling=config.frame_pooling)
    return CompositeVideoPolicy(lm, tokenizer, encoder, config, sqr).eval()


def tiny_search_setup(root: Path, num_train: int = 6, num_test: int = 4, split: str = "test"):
    """A tiny synthetic benchmark and a randomly initialised dual-encoder engine indexing one split."""
    import torch

    from vsr_model.backbones import FrameEncoderConfig
    from vsr_model.corpus import Corpus
    from vsr_model.data.synth import SynthConfig, generate
    from vsr_model.engine.dual import DualEncoderConfig, DualEncoderEngine, PoolerConfig, TextEncoderConfig
    from vsr_model.video import FrameSampling

    generate(
        SynthConfig(num_train=num_train, num_val=2, num_test=num_test, seed=3, height=64, width=80), root
    )
    sampling = FrameSampling(fps=1.0, max_frames=4)
    engine = DualEncoderEngine(
        DualEncoderConfig(
            text=TextEncoderConfig(name="random-bert", hidden_size=32),
            frames=FrameEncoderConfig(weights="random", image_size=32),
            sampling=sampling,
            pooler=PoolerConfig(hidden_size=32, num_heads=2, num_queries=2),
        )
    )
    corpus = Corpus.from_jsonl(root / "videos.jsonl", split=split, sampling=sampling)
    with torch.no_grad():
        engine.add_videos(corpus.ids, engine.encode_videos([corpus.clip(v) for v in corpus.ids]))
    return engine, corpus
