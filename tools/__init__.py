"""Build and release tools for the repository; never deployed (listed in ``.funcignore``)."""
