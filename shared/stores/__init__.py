"""What is kept in Azure Storage: dead letters, blob checkpoints, and the storage clients
they are built from.
"""
