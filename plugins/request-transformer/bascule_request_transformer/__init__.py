"""bascule-request-transformer: rewrite what the gateway sends upstream."""

from .plugin import RequestTransformer
from .settings import FieldRules, HeaderRules, TransformerSettings

__all__ = ["FieldRules", "HeaderRules", "RequestTransformer", "TransformerSettings"]
