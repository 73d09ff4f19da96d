"""What Mesher is: outbound and inbound routing, balancing, the exchange."""
