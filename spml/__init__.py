"""Single-positive multi-label learning with CAM-based loss rejection (CALR)."""

__version__ = "0.1.0"

# Registers the built-in architectures: any import of spml (spml.model included) runs this first,
# so create_model and load_model know them all.
import spml.architectures  # noqa: E402, F401
from spml.checkpoint import LoadedModel, load_model, save_checkpoint  # noqa: E402
from spml.inspect import AnalysisResult, analyze  # noqa: E402

__all__ = ["AnalysisResult", "LoadedModel", "analyze", "load_model", "save_checkpoint", "__version__"]
