"""Entry point the Functions worker imports: the one FunctionApp of this bundle.

Each trigger family lives in a Blueprint under ``functions/``; nothing else belongs here.
"""

import azure.functions as func

from functions.blob import bp as blob_functions
from functions.http import bp as http_functions
from functions.queue import bp as queue_functions

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(http_functions)
app.register_functions(queue_functions)
app.register_functions(blob_functions)
