"""The prepared GPU check: ``scripts/gpu_check.sh OUTDIR [--cpu-smoke]``, one command on a stock CUDA machine.

It needs only what such a machine has (torch, torchvision, safetensors, opencv, pillow, pyyaml, tqdm,
huggingface-hub, pytest, scipy; no gradio, no network) and runs the project from its source tree.
Sections, each timed and written to OUTDIR/gpu_check.json as soon as it ends (a killed check keeps
what it measured); the shell script tees everything into OUTDIR/gpu_check.log:

- ``environment``: torch, CUDA, the card;
- ``bench``: ``train bench`` figures (AN / CALR / reference-style step, images/s, peak memory) for
  ResNet-50 and Q2L at 448 px batch 16, fp32 and bf16, with the issue's target ratios;
- ``loader``: the training loader alone (weak + strong views, 16 workers, 448 px) in images/s against
  the CALR step's images/s;
- ``fit`` and ``fit_torchrun``: a real CALR run (ResNet-50, 448 px, random init, a synthetic world of
  2,000 images, 2 epochs) killed after epoch 1, resumed, then ``train evaluate``; the second under
  ``torchrun --nproc_per_node=1``;
- ``audit``: audit images/s against plain batched inference; ``analyze``: one analysis's latency;
- ``tests``: the test suite without the browser and app tests (those import gradio), last, with
  whatever time is left.

``--cpu-smoke`` runs every section tiny on the CPU (well under a minute) so that a test keeps it working.

:mod:`train.gpu_check.plan` says what each section runs (the full check or its smoke),
:mod:`train.gpu_check.sections` holds the sections, and ``python -m train.gpu_check``
(:mod:`train.gpu_check.__main__`) runs them in order and writes the report.
"""

