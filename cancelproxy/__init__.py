"""cancelproxy: a reverse proxy for OpenAI-compatible LLM APIs that makes Stop real."""

from .app import create_app
from .config import Config, ConfigError, load_config
from .records import Record, Status, StopReason

__all__ = ["Config", "ConfigError", "Record", "Status", "StopReason", "__version__", "create_app", "load_config"]

__version__ = "0.1.0"
