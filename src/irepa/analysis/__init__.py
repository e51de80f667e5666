"""The encoder study as a toolkit: measure encoders, correlate measures with FID, the paper's numbers, reports.

* :mod:`~irepa.analysis.measure` — images (+ masks, labels) → patch tokens → spatial metrics (+ linear probe), the
  one measurement path of the CLI, the demo and the reports;
* :mod:`~irepa.analysis.plots` — every figure (similarity maps, PCA token maps, correlograms, correlation panels).

Modules import lazily; matplotlib and scipy load only in the functions that need them.
"""
