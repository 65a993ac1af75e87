"""The Power BI push-dataset limits the emulator enforces, each with its source.

Source for every number unless noted: "Push semantic model limitations",
https://learn.microsoft.com/en-us/power-bi/developer/embedded/push-datasets-limitations
"""

from __future__ import annotations

from typing import Final

MAX_TABLES: Final = 75
MAX_COLUMNS: Final = 75
MAX_RELATIONSHIPS: Final = 75
MAX_ROWS_PER_POST: Final = 10_000
MAX_ROWS_PER_HOUR: Final = 1_000_000
MAX_PENDING_POSTS: Final = 5
MAX_POSTS_PER_MINUTE: Final = 120
#: "If table has 250,000 or more rows, 120 POST rows requests per hour per semantic model".
LARGE_TABLE_ROWS: Final = 250_000
MAX_POSTS_PER_HOUR_LARGE_TABLE: Final = 120
#: "200,000 max rows stored per table in FIFO semantic model"
FIFO_MAX_ROWS: Final = 200_000
#: "5,000,000 max rows stored per table in 'none retention policy' semantic model"
NONE_RETENTION_MAX_ROWS: Final = 5_000_000
#: "4,000 characters per value for string column in POST rows operation"
MAX_STRING_LENGTH: Final = 4_000
#: "16 MB/request" (service-real-time-streaming). The exact byte count is not documented; the
#: emulator takes the stricter decimal reading so a client that passes here passes the service.
MAX_BODY_BYTES: Final = 16_000_000
#: Table and relationship names: 1-100 characters (OpenAPI pattern of Table.name).
MAX_TABLE_NAME_LENGTH: Final = 100

MINUTE: Final = 60.0
HOUR: Final = 3600.0
