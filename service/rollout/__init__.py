"""Safe rollout between a model's versions (docs/rollout.md): version labels, a canary split of unversioned
predictions and shadow traffic compared with the primary's answers (plan.py: the rollout and the choice of a
version; shadow.py: the shadow runs and their comparison). The data plane applies them, once for every
protocol; model control (control.py) sets them on every worker."""
