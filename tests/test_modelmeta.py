"""A model's metadata without torch: ModelMeta's checks, its conversion, and header readers that never import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import inspector
from inspector.base.artifact import META_KEY
from inspector.imaging.convert import Conversion, Window
from inspector.base.errors import ModelError
from inspector.imaging.modelmeta import ModelMeta, read_meta

SIZE = (64, 32)


def meta_for(**kw) -> ModelMeta:
    base = dict(method="global", window=[1500, 3000], input_size=list(SIZE))
    base.update(kw)
    return ModelMeta(**base)


def header_only_model(path, meta: ModelMeta):
    """A safetensors file with inspector's metadata and one numpy tensor: written and read without torch."""
    save_file({"probe": np.zeros(1, np.float32)}, str(path), metadata={META_KEY: meta.to_json()})
    return path


def test_meta_ignores_unknown_fields_and_needs_required_ones():
    meta = meta_for()
    data = json.loads(meta.to_json())
    data["from_the_future"] = 1
    assert ModelMeta.from_json(json.dumps(data)) == meta
    del data["input_size"]
    with pytest.raises(ModelError, match="metadata lacks input_size"):
        ModelMeta.from_json(json.dumps(data))


def test_meta_validation():
    with pytest.raises(ModelError, match="'global' needs a window"):
        ModelMeta(method="global", window=None, input_size=SIZE)
    with pytest.raises(ModelError, match="is unknown"):
        ModelMeta(method="fancy", window=None, input_size=SIZE)
    with pytest.raises(ModelError, match="hi must be above lo"):
        ModelMeta(method="global", window=(3000, 1000), input_size=SIZE)
    with pytest.raises(ModelError, match=r"model clahe .* tile grid must be at least 1, got 0"):
        ModelMeta(method="clahe", window=(1000, 3000), input_size=SIZE, clahe={"clip_limit": 2.0, "tile_grid": 0})
    assert ModelMeta(method="local", window=None, input_size=[8, 4]).input_size == (8, 4)


def test_meta_conversion_is_its_method_window_and_clahe():
    meta = meta_for(method="clahe", clahe={"clip_limit": 3.0, "tile_grid": 4})
    assert meta.conversion == Conversion("clahe", Window(1500, 3000), (3.0, 4))
    assert meta_for(method="local", window=None).conversion == Conversion("local")
    # what build.py writes is what the model reads back
    again = ModelMeta(**meta.conversion.to_meta(), input_size=SIZE)
    assert again.conversion == meta.conversion and again.clahe == {"clip_limit": 3.0, "tile_grid": 4}


def test_read_meta_without_loading_weights(tmp_path):
    meta = meta_for(threshold=0.3)
    assert read_meta(header_only_model(tmp_path / "m.safetensors", meta)) == meta
    with pytest.raises(ModelError, match="does not exist; train one"):
        read_meta(tmp_path / "nope.safetensors")


def run_without_torch(code: str, cwd) -> str:
    """Run `code` in a fresh interpreter and answer its output; it fails where torch was imported."""
    check = textwrap.dedent(code) + "\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    env = {k: v for k, v in os.environ.items() if k != "INSPECTOR_CONFIG"}
    root = Path(inspector.__file__).resolve().parent.parent  # the child imports the inspector under test
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", check], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_reading_a_header_and_the_web_import_no_torch(tmp_path):
    path = header_only_model(tmp_path / "m.safetensors", meta_for())
    out = run_without_torch(f"""
        import sys
        import inspector.web.app, inspector.web.media
        from inspector.imaging.convert import convert_recorded
        from inspector.imaging.modelmeta import read_meta
        meta = read_meta({str(path)!r})
        print(meta.conversion.method, meta.conversion.window.as_tuple())
        """, tmp_path)
    assert out == "global (1500, 3000)\n"


def test_python_m_inspector_model_info_imports_no_torch(tmp_path):
    path = header_only_model(tmp_path / "m.safetensors", meta_for())
    out = run_without_torch(f"""
        import runpy, sys
        sys.argv = ["inspector", "model", "info", {str(path)!r}]
        try:
            runpy.run_module("inspector", run_name="__main__")
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        """, tmp_path)
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.split(None, 1)[0] in ("method", "window"))
    assert rows == {"method": "global", "window": "1500-3000"}
