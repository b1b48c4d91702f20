import numpy as np
import pytest
import torch

from vsr_model.backbones import FrameEncoderConfig, load_frame_encoder, tiny_frame_encoder, tiny_text_encoder


def test_tiny_frame_encoder_maps_uint8_frames_to_features():
    enc = tiny_frame_encoder(image_size=32)
    frames = np.random.default_rng(0).integers(0, 255, size=(5, 40, 60, 3), dtype=np.uint8)
    out = enc(frames)
    assert out.shape == (5, enc.feature_dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # frames are independent: encoding one frame alone gives the same row
    assert torch.allclose(enc(frames[2:3])[0], out[2], atol=1e-5)
    assert not any(p.requires_grad for p in enc.parameters())


def test_frame_encoder_batches_without_changing_results():
    enc = tiny_frame_encoder(image_size=32)
    frames = np.random.default_rng(1).integers(0, 255, size=(7, 32, 32, 3), dtype=np.uint8)
    full = enc(frames)
    enc.config.batch_size = 3
    assert torch.allclose(enc(frames), full, atol=1e-5)


def test_frame_encoder_runs_when_only_its_parameters_were_cast_to_bf16():
    # DeepSpeed bf16 casts parameters, not BatchNorm statistics; the encoder follows its parameters.
    enc = tiny_frame_encoder(image_size=32).eval()
    frames = np.random.default_rng(2).integers(0, 255, size=(3, 32, 32, 3), dtype=np.uint8)
    reference = enc(frames)
    for param in enc.parameters():
        param.data = param.data.to(torch.bfloat16)
    assert any(b.dtype == torch.float32 for b in enc.buffers())
    out = enc(frames)
    assert out.dtype == torch.float32
    assert all(b.dtype == torch.bfloat16 for b in enc.buffers() if b.is_floating_point())
    assert torch.allclose(out, reference, atol=0.1, rtol=0.05)


def test_frame_encoder_preprocess_scales_to_unit_range():
    enc = tiny_frame_encoder(image_size=16)
    x = enc.preprocess(torch.full((1, 16, 16, 3), 255, dtype=torch.uint8))
    assert x.shape == (1, 3, 16, 16)
    assert torch.allclose(x, torch.full_like(x, (255 - 127) / 128))


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), TypeError),
        (np.zeros((8, 8, 3), dtype=np.uint8), ValueError),
        (np.zeros((2, 8, 8, 4), dtype=np.uint8), ValueError),
        ([[1, 2]], TypeError),
    ],
)
def test_frame_encoder_rejects_bad_frames(bad, error):
    with pytest.raises(error, match="frames"):
        tiny_frame_encoder()(bad)


def test_unknown_frame_encoder_and_missing_weights_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown frame encoder"):
        load_frame_encoder(FrameEncoderConfig(name="resnet50"))
    with pytest.raises(FileNotFoundError, match="weights not found"):
        load_frame_encoder(FrameEncoderConfig(weights=str(tmp_path / "none.pth")))


def test_tiny_text_encoder_uses_minilm_tokenizer():
    tok, model = tiny_text_encoder(hidden_size=32)
    ids = tok(["a red circle"], return_tensors="pt")
    out = model(**ids).last_hidden_state
    assert out.shape[-1] == 32
    assert tok.convert_ids_to_tokens(ids["input_ids"][0].tolist())[0] == "[CLS]"


@pytest.mark.slow
def test_real_backbones_load_offline():
    from vsr_model.backbones import load_text_encoder

    _, model = load_text_encoder()
    assert model.config.hidden_size == 384
    enc = load_frame_encoder()
    assert enc.feature_dim == 1280
    frames = np.random.default_rng(0).integers(0, 255, size=(2, 64, 64, 3), dtype=np.uint8)
    assert enc(frames).shape == (2, 1280)
