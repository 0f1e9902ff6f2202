"""Home of the exploration lab of seed 003 (issue 15): pattern-1101 and BoolNet tasks and models,
vectorised restarts, reports. Empty so far.
"""
