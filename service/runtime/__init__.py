"""The runtimes: one object runs one model package (base.py); one runtime per task."""
