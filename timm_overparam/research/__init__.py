"""Home of the research instruments of seed 002 (issue 14): depth-limit residual networks and their
data, p-variation of weight paths, Omega(t), loss landscapes, path tools and curve fits, hooked into
training as callbacks. Empty so far.
"""
