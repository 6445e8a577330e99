"""notifier: a consumer group that logs every order-status event from loms, at least once."""
