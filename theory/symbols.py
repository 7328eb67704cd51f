"""The SymPy symbols shared by every claim (one definition each)."""

import sympy as sp

eta = sp.Symbol("eta", positive=True)  # learning rate
w = sp.Symbol("w", positive=True)  # weight of a cosine term
tau = sp.Symbol("tau", positive=True)  # temperature
theta = sp.Symbol("theta", real=True)  # angle to a prototype / between two points
c = sp.Symbol("c", real=True)  # cosine between two unit vectors
beta = sp.Symbol("beta", real=True)  # eta * w, signed: > 0 attract, < 0 repel
a = sp.Symbol("a", positive=True)  # eta * w for the anchor map
p_pos = sp.Symbol("p_pos", positive=True)  # softmax weight of the positive
neg_cos = sp.Symbol("c_neg", real=True)  # softmax-weighted mean cosine of the negatives
neg_spread = sp.Symbol("s_neg", nonnegative=True)  # tangent second moment of the negatives
n = sp.Symbol("n", positive=True, integer=True)  # points per side / negatives
E = sp.Symbol("E", positive=True)  # stands for exp(1/tau) in softmax algebra
