"""Kafka and Faust glue: writer, topics, topic followers, bounded reads, sensors."""
