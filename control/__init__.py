"""emunet control: the CLI, pod-shell and fabric orchestration."""
