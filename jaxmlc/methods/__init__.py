"""Methods, one module each; importing this package registers them all."""
import importlib

for _name in ("baseline", "hst", "dmacn", "asge", "cma", "mscnn", "mmdl"):
  try:
    importlib.import_module(f"{__name__}.{_name}")
  except ModuleNotFoundError as e:  # a method not written yet
    if e.name != f"{__name__}.{_name}":
      raise
