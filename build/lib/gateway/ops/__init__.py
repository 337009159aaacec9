"""Operating the gateway: health and readiness, metrics, structured logs, SMTP session
tracking and event webhooks to senders."""
