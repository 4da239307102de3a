"""Studies that produce the course's tables and plots, one module per chapter that needs more than a test.

``python -m minialign.experiments STUDY [--out DIR] [--quick]``; the exact-lab studies that chapters and tests call
directly (``rlhf_lab``) have no command of their own.
"""

STUDIES = {
    "gdc_study": "chapter 06: GDC against KL-penalised RLHF at the equivalent β, budgets, distillation onto p",
    "fdpg_study": "chapter 07: f-DPG with each f on the exact lab and on names",
}
