"""Memory and FLOPs budgets, by formula: ``training`` (per device under the parallel plan, and the
model's FLOPs) and ``inference`` (the whole model on one device). ``plan`` prints them."""
