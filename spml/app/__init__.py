"""The Gradio app's rooms: what ``app.py`` lays out and wires.

- ``common``: what every room shares (the ZeroGPU decorator, user-facing errors, view objects, output files)
- ``registry``: the checkpoints on offer, loading them, and their cards
- ``inspect``: the Inspect tab (one image analysed) and its examples
- ``audit``: the Audit tab (a data set audited) and the review of its suspects
- ``workspace``: where the Audit tab keeps its audits (one folder an audit, found again by its input)
- ``assets``: page text, the method figure, the review's keyboard script, the style sheet

The model logic lives in ``spml.inspect`` and ``spml.audit``; these modules only call and format it.
"""
