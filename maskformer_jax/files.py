"""Files written whole or not at all: a temporary name in the same folder, then an atomic rename."""

import json
import os
import pathlib

from PIL import Image


def _write_atomically(path, write):
    """Call `write(temporary_path)`, then rename the file to `path`: readers never see part of it."""
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.replace(temporary, path)


def write_png(path, array):
    """Write an image atomically; uint16 arrays become 16-bit greyscale PNGs."""
    _write_atomically(path, lambda temporary: Image.fromarray(array).save(temporary, format="PNG"))


def write_text(path, text: str):
    """Write text atomically."""
    _write_atomically(path, lambda temporary: temporary.write_text(text))


def write_json(path, data, indent=None):
    """Write JSON atomically."""
    write_text(path, json.dumps(data, indent=indent))
