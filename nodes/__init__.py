"""emunet node agent: real I/O around the sans-I/O data plane."""
