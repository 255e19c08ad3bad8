"""Webhooks: notifications about a task, signed as the Standard Webhooks specification says,
kept in the task store until delivered (an outbox), sent by the API processes' sender thread.
docs/api.md "Webhooks" says what a receiver gets; docs/security.md the address rules."""
