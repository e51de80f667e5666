"""The embedded offline demo (``irepa demo``, ``make demo``): REPA vs iREPA at laptop scale.

Modules (heavy imports happen inside the functions, so ``import irepa.demo`` is light):

* :mod:`~irepa.demo.teachers` — the tiny ViTs shipped in ``irepa/assets`` (teachers and the FD evaluator) and the
  ``irepa demo teacher`` training that reproduces them;
* :mod:`~irepa.demo.settings` — what a demo runs (:class:`~irepa.demo.settings.DemoSettings`, three presets);
* :mod:`~irepa.demo.experiment` — the demo end to end on the real trainer, samplers and evaluator, resumable;
* :mod:`~irepa.demo.evaluation` — samples from EMA snapshots and the Fréchet distance in the evaluator's space;
* :mod:`~irepa.demo.analysis` — teacher cards, similarity maps with and without spatial normalization;
* :mod:`~irepa.demo.plots`, :mod:`~irepa.demo.report` — figures, ``results.json`` and ``report.md``.

See docs/demo.md.
"""
