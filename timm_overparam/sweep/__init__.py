"""Home of the sweep runner and run comparisons (issue 13): wandb-format sweep files run on a search
engine with a database, without a wandb server, and ``compare`` reports over run folders. Empty so far.
"""
