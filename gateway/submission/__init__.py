"""What a submission server on the internet needs beyond the protocol: connection and session
limits, AUTH throttling, sender authorization and strict envelope parsing."""
