"""Running tritonserver: ``launch`` starts and stops the process, ``supervise`` keeps it serving
(restarts, watchdog, reloads), ``state`` records a background server in its state folder."""
