import json

import numpy as np
import pytest

from tests.vsr_model.conftest import make_frames
from vsr_model.video import (
    FrameCache,
    FrameSampling,
    VideoClip,
    VideoDecodeError,
    decode_video,
    fit_max_pixels,
    rgb_to_yuv420p,
    sample_times,
    write_video,
)


def test_decode_returns_true_timestamps_at_requested_rate(tiny_video):
    clip = decode_video(tiny_video, FrameSampling(fps=2.0, max_frames=64))
    assert clip.duration == pytest.approx(6.0)
    assert clip.fps == pytest.approx(10.0)
    assert clip.num_frames == 12
    # bin centres 0.25, 0.75, ... land on frames starting at 0.2, 0.7, ...
    np.testing.assert_allclose(clip.timestamps, np.arange(12) * 0.5 + 0.2, atol=1e-6)
    # the frame content matches its timestamp: brightness encodes the source frame index
    src_index = np.round(clip.timestamps * 10).astype(int)
    expected = src_index * 4 % 200 + 20 + 3.5
    np.testing.assert_allclose(clip.frames.reshape(12, -1).mean(1), expected, atol=3.0)


def test_long_video_sampled_sparsely_keeps_correct_times(tmp_path):
    path = write_video(tmp_path / "long.mp4", make_frames(200, 32, 32), fps=2)  # 100 s
    clip = decode_video(path, FrameSampling(fps=1.0, max_frames=8))
    assert clip.num_frames == 8
    # spread over the whole 100 s, not the first 8 s
    np.testing.assert_allclose(clip.timestamps, (np.arange(8) + 0.5) * 12.5 - 0.25, atol=0.26)
    assert clip.timestamps[-1] > 90


def test_short_video_gets_min_frames(tiny_video):
    clip = decode_video(tiny_video, FrameSampling(fps=0.1, max_frames=8, min_frames=4))
    assert clip.num_frames == 4


def test_max_pixels_resizes_keeping_aspect(tiny_video):
    clip = decode_video(tiny_video, FrameSampling(max_pixels=600))
    h, w = clip.frames.shape[1:3]
    assert h * w <= 600
    assert abs(w / h - 64 / 48) < 0.25
    assert fit_max_pixels(48, 64, None) == (48, 64)


def test_sample_times_cover_the_video():
    t = sample_times(10.0, FrameSampling(fps=1.0, max_frames=64))
    np.testing.assert_allclose(t, np.arange(10) + 0.5)
    assert len(sample_times(1000.0, FrameSampling(fps=1.0, max_frames=64))) == 64


def test_corrupt_and_truncated_videos_raise_clear_errors(tmp_path, tiny_video):
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoDecodeError, match=r"garbage\.mp4"):
        decode_video(bad)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(tiny_video.read_bytes()[:300])
    with pytest.raises(VideoDecodeError, match=r"truncated\.mp4"):
        decode_video(truncated)
    with pytest.raises(FileNotFoundError):
        decode_video(tmp_path / "missing.mp4")


def test_videoclip_validates_its_fields():
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="increasing"):
        VideoClip(frames, np.array([1.0, 1.0]), 2.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        VideoClip(frames, np.array([0.0, np.nan]), 2.0, 1.0)
    with pytest.raises(TypeError, match="uint8"):
        VideoClip(frames.astype(np.float32), np.array([0.0, 1.0]), 2.0, 1.0)
    with pytest.raises(ValueError, match="timestamps"):
        VideoClip(frames, np.array([0.0]), 2.0, 1.0)


def test_frame_cache_decodes_once_and_keys_on_sampling(tmp_path, tiny_video):
    cache = FrameCache(tmp_path / "cache")
    a = cache.get(tiny_video, FrameSampling(fps=1.0))
    b = cache.get(tiny_video, FrameSampling(fps=1.0))
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    c = cache.get(tiny_video, FrameSampling(fps=2.0))
    assert cache.misses == 2 and c.num_frames == 2 * a.num_frames
    metas = list((tmp_path / "cache").rglob("*.json"))
    assert len(metas) == 2
    assert json.loads(metas[0].read_text())["source"].endswith("tiny.mp4")
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_frame_cache_recovers_from_a_damaged_entry(tmp_path, tiny_video):
    cache = FrameCache(tmp_path / "cache")
    first = cache.get(tiny_video, FrameSampling())
    (npy,) = list((tmp_path / "cache").rglob("*.npy"))
    npy.write_bytes(b"broken")
    again = cache.get(tiny_video, FrameSampling())
    assert cache.misses == 2
    np.testing.assert_array_equal(first.frames, again.frames)


@pytest.mark.parametrize("damage", [b'{"source": "x", "timest', b"\xff\xfe", b"[1, 2]", b'{"shape": null}'])
def test_frame_cache_recovers_from_a_torn_or_foreign_metadata_file(tmp_path, tiny_video, damage, caplog):
    cache = FrameCache(tmp_path / "cache")
    first = cache.get(tiny_video, FrameSampling())
    (meta,) = list((tmp_path / "cache").rglob("*.json"))
    meta.write_bytes(damage)
    with caplog.at_level("WARNING"):
        again = cache.get(tiny_video, FrameSampling())
    assert "is unreadable" in caplog.text
    assert cache.misses == 2
    np.testing.assert_array_equal(first.frames, again.frames)
    assert json.loads(meta.read_text())["shape"] == list(first.frames.shape)  # rewritten whole


def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 5, 4, 3), np.uint8), fps=5)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 4, 4, 3), np.float32), fps=5)
    assert not (tmp_path / "x.mp4").exists()


def test_rgb_to_yuv420p_is_bt601_limited_range_with_averaged_chroma():
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[:, :2] = 255  # white
    frame[:, 2:4] = (255, 0, 0)  # red
    frame[:2, 4:] = 255  # a white/black block: chroma of its 2x2 averages stays neutral
    planes = rgb_to_yuv420p(frame)
    assert planes.shape == (6, 6) and planes.dtype == np.uint8
    y = planes[:4]
    u, v = planes[4:5].reshape(2, 3), planes[5:6].reshape(2, 3)
    assert (y[:, :2] == 235).all() and (y[:, 2:4] == 81).all() and (y[2:, 4:] == 16).all()
    assert (u[:, 0] == 128).all() and (v[:, 0] == 128).all()
    assert (u[:, 1] == 90).all() and (v[:, 1] == 240).all()
    assert (u[:, 2] == 128).all() and (v[:, 2] == 128).all()


def test_rgb_to_yuv420p_matches_the_bt601_formula_on_random_frames():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8)
    rgb = frame.astype(np.float64)
    y = 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255
    block = rgb.reshape(3, 2, 5, 2, 3).mean(axis=(1, 3))
    u = 128 + (-37.797 * block[..., 0] - 74.203 * block[..., 1] + 112.0 * block[..., 2]) / 255
    v = 128 + (112.0 * block[..., 0] - 93.786 * block[..., 1] - 18.214 * block[..., 2]) / 255
    planes = rgb_to_yuv420p(frame).reshape(-1).astype(np.float64)
    got_y, got_u, got_v = planes[:60].reshape(6, 10), planes[60:75].reshape(3, 5), planes[75:].reshape(3, 5)
    for got, want in ((got_y, y), (got_u, u), (got_v, v)):
        assert np.abs(got - np.clip(want, 0, 255)).max() <= 0.5 + 1e-3  # correctly rounded


def test_lossless_write_video_decodes_to_exactly_the_converted_frames(tmp_path):
    # A moving, changing scene long enough for several groups of pictures. Lossy x264 output is not
    # bit-reproducible; lossless output decodes to the same pixels whatever the encoder chose.
    import av

    from vsr_model.data import synth
    from vsr_model.data import synth_world as world

    config = synth.SynthConfig(**synth.PRESETS["small"], seed=0)
    plan = synth.plan_split(config, "test", synth.held_out_pairs(config))[0]
    frames = world.render_video(
        plan.background, plan.events, plan.num_frames, config.height, config.width, config.fps
    )
    path = write_video(tmp_path / "v.mp4", frames, fps=config.fps, crf=0)
    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="yuv420p") for f in container.decode(video=0)])
    assert np.array_equal(decoded, np.stack([rgb_to_yuv420p(f) for f in frames]))
