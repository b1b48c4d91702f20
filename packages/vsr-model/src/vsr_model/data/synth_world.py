"""The visual vocabulary of the synthetic benchmark and a renderer for it.

Objects are coloured geometric shapes, a horse silhouette and colour-tinted photo sprites from
scikit-image's sample images; actions are appear / disappear / move (4 directions) / grow / shrink /
spin / blink; backgrounds are solid colours, patterns and photographic textures. Each name has
paraphrases: training captions use the first half, held-out captions (val / test) the second half.

Rendering is a pure function of an event's parameters (no randomness here), so a planned video
renders to the same pixels every time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 210),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "pink": (250, 120, 190),
    "cyan": (40, 220, 230),
}

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
SILHOUETTES = {"horse": "horse"}  # object name -> skimage.data image (boolean mask)
SPRITES = {  # object name -> skimage.data image
    "astronaut": "astronaut",
    "coffee cup": "coffee",
    "cat": "chelsea",
    "rocket": "rocket",
    "cameraman": "camera",
    "clock": "clock",
}
OBJECTS = SHAPES + tuple(SILHOUETTES) + tuple(SPRITES)
ROTATION_INVARIANT = frozenset({"circle", "ring"})  # "spin" would be invisible on these

ACTIONS = (
    "appear",
    "disappear",
    "move_right",
    "move_left",
    "move_up",
    "move_down",
    "grow",
    "shrink",
    "spin",
    "blink",
)

# Paraphrases: index 0-1 are training wordings, 2-3 are held out for val / test captions.
ACTION_PHRASES: dict[str, tuple[str, str, str, str]] = {
    "appear": ("appears", "fades in", "materialises", "slowly shows up"),
    "disappear": ("disappears", "fades out", "vanishes", "fades away"),
    "move_right": (
        "moves to the right",
        "slides right",
        "travels rightwards",
        "drifts toward the right side",
    ),
    "move_left": ("moves to the left", "slides left", "travels leftwards", "drifts toward the left side"),
    "move_up": ("moves up", "rises", "floats upward", "climbs toward the top"),
    "move_down": ("moves down", "falls", "sinks downward", "drops toward the bottom"),
    "grow": ("grows", "gets bigger", "expands", "becomes larger"),
    "shrink": ("shrinks", "gets smaller", "contracts", "becomes tinier"),
    "spin": ("rotates", "spins", "turns around", "twirls"),
    "blink": ("blinks", "flashes", "flickers", "keeps flashing on and off"),
}
SIZE_WORDS: dict[str, tuple[str, str, str, str]] = {
    "small": ("small", "small", "little", "tiny"),
    "large": ("large", "large", "big", "huge"),
}
SIZE_RADIUS = {"small": 0.13, "large": 0.24}  # fraction of frame height

BACKGROUNDS: dict[str, tuple[str, object]] = {
    "black": ("solid", (12, 12, 12)),
    "navy": ("solid", (15, 20, 70)),
    "dark green": ("solid", (10, 55, 25)),
    "maroon": ("solid", (70, 15, 20)),
    "striped": ("stripes", ((30, 30, 60), (70, 70, 90))),
    "checkered": ("checker", ((25, 25, 25), (80, 80, 80))),
    "gradient": ("gradient", ((10, 10, 40), (90, 40, 10))),
    "brick wall": ("texture", "brick"),
    "grass": ("texture", "grass"),
    "gravel": ("texture", "gravel"),
    "moon surface": ("texture", "moon"),
}

TRAIN_TEMPLATES = (
    "a {size} {color} {object} {action} on a {background} background",
    "on the {background} background, a {size} {color} {object} {action}",
    "the {size} {color} {object} {action} in front of a {background} background",
    "{background} background: a {color} {object}, {size}, {action}",
)
HELD_OUT_TEMPLATES = (
    "there is a {size} {color} {object} that {action}, with a {background} backdrop behind it",
    "against a {background} backdrop one {size} {color} {object} {action}",
)


@dataclass(frozen=True)
class EventSpec:
    """One event: an object doing an action over frames [start_frame, end_frame)."""

    size: str
    color: str
    object: str
    action: str
    start_frame: int
    end_frame: int
    x: float  # start centre, fraction of width
    y: float  # start centre, fraction of height
    angle: float  # initial rotation, radians

    @property
    def signature(self) -> tuple[str, str, str, str]:
        return (self.size, self.color, self.object, self.action)


@cache
def _sk_image(name: str) -> np.ndarray:
    import skimage.data

    return np.asarray(getattr(skimage.data, name)())


@cache
def sprite_texture(obj: str, side: int = 128) -> np.ndarray:
    """Luminance in [0, 1] (side, side) of a sprite, or a {0, 1} mask for a silhouette."""
    from skimage.transform import resize

    name = SPRITES.get(obj) or SILHOUETTES[obj]
    img = _sk_image(name).astype(np.float32)
    if img.ndim == 3:
        img = img[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    img = img / max(float(img.max()), 1.0)
    h, w = img.shape
    s = min(h, w)  # centre square crop so the sprite keeps its proportions
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return resize(img, (side, side), order=1, anti_aliasing=True).astype(np.float32)


@cache
def _texture(name: str, height: int, width: int) -> np.ndarray:
    from skimage.transform import resize

    img = _sk_image(name).astype(np.float32) / 255.0
    return resize(img, (height, width), order=1, anti_aliasing=True).astype(np.float32)


def render_background(name: str, height: int, width: int) -> np.ndarray:
    """float32 (H, W, 3) in [0, 255]."""
    kind, param = BACKGROUNDS[name]
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == "solid":
        return np.broadcast_to(np.array(param, np.float32), (height, width, 3)).copy()
    if kind in ("stripes", "checker"):
        a, b = (np.array(c, np.float32) for c in param)
        period = max(height // 8, 2)
        on = (xx // period) % 2 == 0 if kind == "stripes" else ((xx // period + yy // period) % 2 == 0)
        return np.where(on[..., None], a, b).astype(np.float32)
    if kind == "gradient":
        a, b = (np.array(c, np.float32) for c in param)
        t = (yy / max(height - 1, 1))[..., None].astype(np.float32)
        return a * (1 - t) + b * t
    lum = _texture(param, height, width)
    return np.repeat((25 + 90 * lum)[..., None], 3, axis=2)


def _object_state(ev: EventSpec, progress: float, local_t: float) -> tuple[float, float, float, float, float]:
    """(cx, cy) as fractions, scale, rotation, opacity at `progress` in [0, 1] through the event."""
    x, y, scale, angle, alpha = ev.x, ev.y, 1.0, ev.angle, 1.0
    travel = 0.45
    if ev.action == "move_right":
        x += travel * progress
    elif ev.action == "move_left":
        x -= travel * progress
    elif ev.action == "move_up":
        y -= travel * progress
    elif ev.action == "move_down":
        y += travel * progress
    elif ev.action == "grow":
        scale = 0.5 + 1.0 * progress
    elif ev.action == "shrink":
        scale = 1.5 - 1.0 * progress
    elif ev.action == "spin":
        angle += 2 * math.pi * progress
    elif ev.action == "appear":
        alpha = min(1.0, 0.1 + 1.8 * progress)
    elif ev.action == "disappear":
        alpha = min(1.0, 0.1 + 1.8 * (1.0 - progress))
    elif ev.action == "blink":
        alpha = 1.0 if int(local_t * 4) % 2 == 0 else 0.0  # 2 Hz on/off
    return x, y, scale, angle, alpha


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the object's own unit coordinates (u, v in [-1, 1] span the object)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "ring":
        d = u * u + v * v
        return (d <= 1.0) & (d >= 0.55**2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if shape == "triangle":
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = -math.pi / 2 + 2 * math.pi * k / 3 + math.pi  # edge normal opposite each vertex
            inside &= u * math.cos(a) + v * math.sin(a) <= 0.5
        return inside
    if shape == "star":
        rho, phi = np.sqrt(u * u + v * v), np.arctan2(v, u)
        return rho <= 0.6 + 0.4 * np.cos(5 * (phi + math.pi / 2))
    raise ValueError(f"unknown shape {shape!r}")


@cache
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def render_event_frame(frame: np.ndarray, ev: EventSpec, frame_index: int, fps: float) -> None:
    """Composite the event's object onto `frame` (float32 (H, W, 3)) in place."""
    height, width = frame.shape[:2]
    span = max(ev.end_frame - ev.start_frame - 1, 1)
    local = frame_index - ev.start_frame
    cx, cy, scale, angle, alpha = _object_state(ev, local / span, local / fps)
    if alpha <= 0:
        return
    radius = SIZE_RADIUS[ev.size] * height * scale
    yy, xx = _pixel_grid(height, width)
    dx, dy = xx - cx * width, yy - cy * height
    c, s = math.cos(angle), math.sin(angle)
    u = (dx * c + dy * s) / radius
    v = (-dx * s + dy * c) / radius
    color = np.array(COLORS[ev.color], np.float32)
    if ev.object in SHAPES:
        mask = _shape_mask(ev.object, u, v).astype(np.float32)
        layer = np.broadcast_to(color, frame.shape)
    else:
        tex = sprite_texture(ev.object)
        side = tex.shape[0]
        inside = (np.abs(u) <= 1) & (np.abs(v) <= 1)
        iu = np.clip(((u + 1) * 0.5 * (side - 1)).round().astype(np.int32), 0, side - 1)
        iv = np.clip(((v + 1) * 0.5 * (side - 1)).round().astype(np.int32), 0, side - 1)
        lum = tex[iv, iu]
        if ev.object in SILHOUETTES:
            # skimage's horse is black on white: the animal is where the luminance is low
            mask = (inside & (lum < 0.5)).astype(np.float32)
            layer = np.broadcast_to(color, frame.shape)
        else:
            mask = inside.astype(np.float32)
            layer = (0.3 + 0.7 * lum)[..., None] * color
    a = (alpha * mask)[..., None]
    frame *= 1 - a
    frame += a * layer


def render_video(
    background: str, events: list[EventSpec], num_frames: int, height: int, width: int, fps: float
) -> np.ndarray:
    """uint8 (num_frames, H, W, 3): the background, with each event's object during its frames."""
    bg = render_background(background, height, width)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for f in range(num_frames):
        frame = bg.copy()
        for ev in events:
            if ev.start_frame <= f < ev.end_frame:
                render_event_frame(frame, ev, f, fps)
        out[f] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def caption(ev: EventSpec, background: str, template: str, wording: int) -> str:
    """Fill a template; `wording` in {0, 1} picks training paraphrases, {2, 3} held-out ones."""
    text = template.format(
        size=SIZE_WORDS[ev.size][wording],
        color=ev.color,
        object=ev.object,
        action=ACTION_PHRASES[ev.action][wording],
        background=background,
    )
    return text[0].upper() + text[1:]
