"""runplane's contract: the events on the log, their codec, and the lifecycle rules.

Nothing in this package does IO. Time, ids and settings come in as arguments.
"""
