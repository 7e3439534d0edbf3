"""bascule-aggregate: one client request, several backend calls, one JSON response."""

from .plugin import Aggregate
from .settings import AggregateSettings, Backend

__all__ = ["Aggregate", "AggregateSettings", "Backend"]
