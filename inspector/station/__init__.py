"""The station layer: the daemon that watches a capture folder and scores each new scan. The main thread
(daemon), its typed collaborators handed to it (scoring: the model's thread; intake: claim, read, gate; mover;
heatmaps; heartbeat; retry: the store-retry policy shared by them; faults: the injection points, a no-op in
service), which files count and when one is complete (watcher), and systemd's notify protocol (notify).
Imports from the store and below."""
