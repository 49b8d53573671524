"""Exports of flipctl models to other toolkits' formats.

- `open_clip`: a model config and a weights file that `open_clip.create_model` loads
  (`export_open_clip`, `load_exported`); `convert_state_dict` maps our weights to open_clip's names
  (also used by `flipctl bench --compare open_clip`).
"""

from flip._lazy import lazy_exports

__all__ = ["convert_state_dict", "export_open_clip", "load_exported", "open_clip_config"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "open_clip": ("convert_state_dict", "export_open_clip", "load_exported", "open_clip_config"),
})
