"""bascule-request-transformer: rewrite what the gateway sends upstream."""

from .plugin import RequestTransformer
from .settings import FieldRules, TransformerSettings

__all__ = ["FieldRules", "RequestTransformer", "TransformerSettings"]
