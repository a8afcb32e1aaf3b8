"""Single-positive multi-label learning with CAM-based loss rejection (CALR)."""

__version__ = "0.1.0"

from spml.checkpoint import LoadedModel, load_model, save_checkpoint  # noqa: E402
from spml.inspect import AnalysisResult, analyze  # noqa: E402

__all__ = ["AnalysisResult", "LoadedModel", "analyze", "load_model", "save_checkpoint", "__version__"]
