"""What goes into the coordinator (events) and what comes out (commands).

Named records, dispatched by name: the coordinator runs `on_<Event>` for
each event, and the master's shell `do_<Command>` for each command.
`peer` is the IP a TCP message came from; `sender` a heartbeat's (IP, port).
"""
from collections import namedtuple

# --- events: the shell turns I/O and time into these -------------------------
Register = namedtuple("Register", "message peer")
AckResult = namedtuple("AckResult", "worker delivered")  # worker: the WorkerRecord
Heartbeat = namedtuple("Heartbeat", "pid sender")
Status = namedtuple("Status", "message peer")
Tick = namedtuple("Tick", "")
Delivered = namedtuple("Delivered", "attempt at")  # attempt id; at: monotonic time sent
Unreachable = namedtuple("Unreachable", "attempt error")
WorkDone = namedtuple("WorkDone", "token result error")
ClientRequest = namedtuple("ClientRequest", "message reply")  # reply: the shell's token
Shutdown = namedtuple("Shutdown", "")

# --- commands: the shell carries these out -----------------------------------
# Send a task's message to a worker; report Delivered or Unreachable.
Deliver = namedtuple("Deliver", "attempt host port message")
# The attempt no longer counts: if its message is not sent yet, never send it.
Revoke = namedtuple("Revoke", "attempt")
# Send register_ack; report AckResult.
Acknowledge = namedtuple("Acknowledge", "worker host port message")
# One UDP datagram from the heartbeat port to `address`.
Datagram = namedtuple("Datagram", "address message")
# Run `run(guard)` off the coordinator's thread; report WorkDone with `token`.
RunInBackground = namedtuple("RunInBackground", "token name run")
Answer = namedtuple("Answer", "reply message")
# Remove a job's files some time soon.
RemoveFiles = namedtuple("RemoveFiles", "path")
# Tell these (host, port) workers to shut down, then stop the master.
Stop = namedtuple("Stop", "workers")
