"""The core package: validation, batching, pacing, the Power BI client and auth.

It never imports azure.functions, so it can be used and tested without the Functions host.
"""
