"""Vocabulary and caption grammar of the built-in synthetic dataset.

Captions, exactly (the canonical caption is always captions[0]):

  video: "a {color} {shape} {motion} on a {background} background"
  image: "a {color} {shape} on a {background} background"

and with a style (--style), every caption ends in that style's phrase:
"a red circle moving left on a black background hollow". Phrases are words
the base tokenizer splits into few pieces (no comma: base captions have none,
so it would be <unk>), keeping a styled video caption within 14 tokens.

`render` draws from this vocabulary, `readback` maps pixels back onto it, and
`parse_caption` maps a canonical caption back to its attributes, so generated
videos can be scored against the prompts they were made from.
"""

from __future__ import annotations

import re

Rgb = tuple[int, int, int]

# Pure, saturated colours: every object colour is a corner of the RGB cube, at
# least 220 apart (Euclidean) from every background colour.
COLOR_RGB: dict[str, Rgb] = {
  "red": (255, 0, 0),
  "green": (0, 255, 0),
  "blue": (0, 0, 255),
  "yellow": (255, 255, 0),
  "cyan": (0, 255, 255),
  "magenta": (255, 0, 255),
  "white": (255, 255, 255),
}
BACKGROUND_RGB: dict[str, Rgb] = {
  "black": (0, 0, 0),
  "gray": (128, 128, 128),
}
COLORS: tuple[str, ...] = tuple(COLOR_RGB)
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_RGB)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
STILL = "standing still"
MOTIONS: tuple[str, ...] = ("moving left", "moving right", "moving up", "moving down", STILL)

# Unit displacement (dx, dy) of each motion in image coordinates (y grows down).
MOTION_DIRECTION: dict[str, tuple[int, int]] = {
  "moving left": (-1, 0),
  "moving right": (1, 0),
  "moving up": (0, -1),
  "moving down": (0, 1),
  STILL: (0, 0),
}

# Visual styles the base data never shows (--style), each with the phrase its
# captions end in: "outlined" draws the object as a ring, "striped" the background
# in horizontal bands of two shades.
STYLES: dict[str, str] = {"outlined": "hollow", "striped": "striped"}

VIDEO_TEMPLATE = "a {color} {shape} {motion} on a {background} background"
IMAGE_TEMPLATE = "a {color} {shape} on a {background} background"

# Extra wordings added after the canonical caption with --paraphrases.
_VIDEO_PARAPHRASES = (
  "a {color} {shape} is {motion} on a {background} background",
  "a {color} {shape} {motion} against a plain {background} backdrop",
  "a plain {background} background with a {color} {shape} {motion}",
)
_IMAGE_PARAPHRASES = (
  "a {color} {shape} against a plain {background} backdrop",
  "a plain {background} background with a {color} {shape}",
  "an image of a {color} {shape} on {background}",
)


def with_style(text: str, style: str) -> str:
  """`text` with the phrase of `style` appended; "" (no style) leaves it as it is."""
  if not style:
    return text
  if style not in STYLES:
    raise ValueError(f"unknown style {style!r}; allowed: {', '.join(STYLES)} or '' (none)")
  return f"{text} {STYLES[style]}"


def caption_style(text: str) -> str | None:
  """The style whose phrase ends `text` (any caption, paraphrases too), or None."""
  words = text.strip()
  for style, phrase in STYLES.items():
    if words.endswith(f" {phrase}"):
      return style
  return None


def caption(color: str, shape: str, motion: str | None, background: str, style: str = "") -> str:
  """The canonical caption; `motion` None means a still image, `style` "" no style."""
  if motion is None:
    text = IMAGE_TEMPLATE.format(color=color, shape=shape, background=background)
  else:
    text = VIDEO_TEMPLATE.format(color=color, shape=shape, motion=motion, background=background)
  return with_style(text, style)


def paraphrases(
  color: str, shape: str, motion: str | None, background: str, style: str = ""
) -> list[str]:
  """Alternative wordings of the same scene (never the canonical caption)."""
  templates = _IMAGE_PARAPHRASES if motion is None else _VIDEO_PARAPHRASES
  return [
    with_style(t.format(color=color, shape=shape, motion=motion, background=background), style)
    for t in templates
  ]


def _alternation(words) -> str:
  return "|".join(re.escape(w) for w in words)


_CAPTION_RE = re.compile(
  rf"a (?P<color>{_alternation(COLORS)}) (?P<shape>{_alternation(SHAPES)})"
  rf"(?: (?P<motion>{_alternation(MOTIONS)}))? on a (?P<background>{_alternation(BACKGROUNDS)})"
  r" background"
  rf"(?: (?P<style>{_alternation(STYLES.values())}))?"
)
_STYLE_OF_PHRASE = {phrase: style for style, phrase in STYLES.items()}


def parse_caption(text: str) -> dict[str, str | None]:
  """Attributes of a canonical caption: color, shape, motion (None for images), background
  and style (the style whose phrase ends it, or None).

  Raises:
    ValueError: `text` is not a canonical caption of this vocabulary.
  """
  m = _CAPTION_RE.fullmatch(text.strip())
  if m is None:
    raise ValueError(
      f"caption {text!r} is not of the form {VIDEO_TEMPLATE!r} or {IMAGE_TEMPLATE!r} "
      "with the synthetic vocabulary, optionally followed by a style phrase "
      f"({', '.join(STYLES.values())})"
    )
  out = m.groupdict()
  out["style"] = _STYLE_OF_PHRASE.get(out["style"])
  return out


def try_parse_caption(text: str) -> dict[str, str | None] | None:
  """`parse_caption`, or None for a caption outside the built-in vocabulary (free text)."""
  try:
    return parse_caption(text)
  except ValueError:
    return None
