"""`annotate crosscheck`: the report (`report.crosscheck`), from the catalog read back (`read`),
its numbers (`assess`), figures (`figures`) and page (`page`)."""

from .assess import no_comparison_line, why_none_compared  # noqa: F401
from .report import CrosscheckResult, crosscheck  # noqa: F401
