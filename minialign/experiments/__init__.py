"""Studies that produce the course's tables and plots, one module per chapter that needs more than a test.

``python -m minialign.experiments fdpg_study [--out runs/fdpg_study] [--quick]``
"""
