"""The base layer: what every other layer stands on and that knows nothing of images, models or databases:
the configuration (config's sections, configfile's reading and checking of config.toml), errors, durable file
writing and moves (durable), paths, times, the bounded thread pipeline, the logging setup, and the torch-free
safetensors header reading (artifact). It imports nothing else of inspector."""
