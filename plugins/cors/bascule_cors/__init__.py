"""bascule-cors: Cross-Origin Resource Sharing, answered at the gateway."""

from .plugin import CORS
from .settings import CORSSettings

__all__ = ["CORS", "CORSSettings"]
