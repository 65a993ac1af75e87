"""Entry point the Functions worker imports: the one FunctionApp of this bundle."""

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

# The Blueprints in functions/ are registered here (app.register_functions(bp))
# as the triggers are added.
