"""What watches production traffic: payload logging (payload.py, sinks.py) and tracing (tracing.py)."""
