"""Power BI's documented push limits, as named constants with their sources.

Push semantic model limitations:
https://learn.microsoft.com/en-us/power-bi/developer/embedded/push-datasets-limitations
"""

from __future__ import annotations

from typing import Final

#: "10,000 max rows per single POST rows request"
MAX_ROWS_PER_POST: Final = 10_000
#: "16 MB/request" for push semantic models (service-real-time-streaming, "Max rate of data
#: ingestion"). The byte count is not documented; 16,000,000 is the stricter reading.
MAX_BODY_BYTES: Final = 16_000_000
#: "120 POST rows requests per minute per semantic model"
MAX_POSTS_PER_MINUTE: Final = 120
#: "If table has 250,000 or more rows, 120 POST rows requests per hour per semantic model"
LARGE_TABLE_ROWS: Final = 250_000
MAX_POSTS_PER_HOUR_LARGE_TABLE: Final = 120
#: "5 max pending POST rows requests per semantic model"
MAX_PENDING_POSTS: Final = 5
#: "1,000,000 rows added per hour per semantic model"
MAX_ROWS_PER_HOUR: Final = 1_000_000
#: "4,000 characters per value for string column in POST rows operation"
MAX_STRING_LENGTH: Final = 4_000
#: "75 max columns" / "75 max tables"
MAX_COLUMNS: Final = 75
MAX_TABLES: Final = 75

MINUTE: Final = 60.0
HOUR: Final = 3600.0
