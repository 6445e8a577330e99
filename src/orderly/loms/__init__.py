"""loms: orders with stock reservation, order-status events through a transactional outbox to Kafka."""
