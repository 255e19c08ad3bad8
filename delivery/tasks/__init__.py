"""The task lifecycle: records and their store, the runs this process holds, the commands users
send, the phases crews run in, the watchdogs, and where phases are executed."""
