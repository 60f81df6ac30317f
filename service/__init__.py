"""The serving side: the runtimes that run model packages (runtime/), the package format and tokenizer
shared with training (core/), the HTTP service (http/), file scoring (scoring/) and the engines it scales out
on (engines/). Server-wide state: settings, registry, metrics, logs."""
