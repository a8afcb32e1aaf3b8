"""Single-positive multi-label learning with CAM-based loss rejection (CALR)."""

# Registers the built-in architectures: any import of spml (spml.model included) runs this first,
# so create_model and load_model know them all.
import spml.architectures  # noqa: F401
from spml.checkpoint import LoadedModel, load_model, save_checkpoint
from spml.inspect import AnalysisResult, analyze
from spml.version import __version__

__all__ = ["AnalysisResult", "LoadedModel", "analyze", "load_model", "save_checkpoint", "__version__"]
